"""Rank allocation (SPEC §3)."""

from __future__ import annotations

import math

from ngc.topology.groups import Group


def uniform_rank(group: Group, ratio_removed: float) -> int:
    """``k_G = floor((1−R) Σ_s m_s n / (Σ_s m_s + n))``: every group keeps the same fraction of its parameters."""
    return math.floor((1.0 - ratio_removed) * group.dense_params / (group.m_total + group.n) + 1e-9)
