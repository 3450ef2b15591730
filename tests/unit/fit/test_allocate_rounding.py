"""Rank rounding for aligned kernels: multiples only, never more parameters than asked for."""

from __future__ import annotations

import pytest

from ngc.api import plan
from ngc.config import CompressionConfig
from ngc.errors import UsageError
from ngc.fit.allocate import round_ranks
from ngc.models.tiny import build_tiny_model


def test_round_ranks_rounds_down_and_keeps_small_ranks():
    assert round_ranks({"a": 130, "b": 64, "c": 5}, 64) == {"a": 128, "b": 64, "c": 5}
    assert round_ranks({"a": 130}, 1) == {"a": 130}


def test_plan_with_a_rank_multiple_removes_at_least_the_ratio():
    model = build_tiny_model("llama")
    _, _, groups, exact = plan(model, CompressionConfig(method="ngc", ratio=0.3))
    _, _, _, rounded = plan(model, CompressionConfig(method="ngc", ratio=0.3, rank_multiple=8))
    assert all(r % 8 == 0 or r < 8 for r in rounded.values())
    assert all(rounded[g] <= exact[g] for g in exact) and rounded != exact
    with pytest.raises(UsageError, match="rank multiple 0"):
        CompressionConfig(rank_multiple=0)
