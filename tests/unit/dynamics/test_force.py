"""Force and departure relative to a reference (SPEC §8.3)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from ngc.api import compress
from ngc.config import CompressionConfig
from ngc.dynamics.force import layer_forces
from ngc.models.tiny import build_tiny_model


def test_a_model_against_itself_has_no_force_and_no_departure():
    model = build_tiny_model("llama")
    forces = layer_forces(model, model, torch.arange(20))
    assert [f.layer for f in forces] == [0, 1]
    assert all(f.force_ratio == 0.0 and f.departure == 0.0 for f in forces)


def test_compression_shows_as_force_and_departure_that_grow_with_the_ratio():
    reference = build_tiny_model("qwen2")
    light, heavy = build_tiny_model("qwen2"), build_tiny_model("qwen2")
    compress(light, CompressionConfig(method="svd", ratio=0.2))
    compress(heavy, CompressionConfig(method="svd", ratio=0.8))
    tokens = torch.randint(0, 250, (24,), generator=torch.Generator().manual_seed(0))
    small, large = layer_forces(light, reference, tokens), layer_forces(heavy, reference, tokens)
    assert all(0 < a.force_ratio < b.force_ratio for a, b in zip(small, large, strict=True))
    assert small[-1].departure < large[-1].departure


def report_and_forces():
    from ngc.dynamics.report import dynamics_per_sequence, measure_dynamics

    reference = build_tiny_model("llama")
    model = build_tiny_model("llama")
    compress(model, CompressionConfig(method="svd", ratio=0.5))
    sequences = torch.randint(0, 250, (3, 24), generator=torch.Generator().manual_seed(1))
    layers = measure_dynamics(model, sequences, reference, probes=3, lanczos_steps=6)
    per_sequence = dynamics_per_sequence(model, sequences, reference, probes=3, lanczos_steps=6)
    forces = [layer_forces(model, reference, tokens) for tokens in sequences]
    return layers, per_sequence, forces


def test_per_layer_report_on_a_tiny_model():
    """Each row is the mean over sequences of that layer's figures (all finite), with standard errors over
    sequences; its departures are those of ``layer_forces`` on each sequence."""
    layers, per_sequence, forces = report_and_forces()
    assert [row.layer for row in layers] == [0, 1]
    for row in layers:
        columns = {
            key: [getattr(s, key)[row.layer] for s in per_sequence]
            for key in ("lyapunov", "divergence", "sym_top", "driving_ratio", "force_ratio", "departure")
        }
        for key, column in columns.items():
            assert len(column) == 3 and all(math.isfinite(v) for v in column), (key, column)
            assert getattr(row, key) == pytest.approx(statistics.fmean(column), rel=1e-12), key
        assert row.lyapunov_se == pytest.approx(statistics.stdev(columns["lyapunov"]) / math.sqrt(3), rel=1e-12)
        ratio_se = statistics.stdev(columns["driving_ratio"]) / math.sqrt(3)
        assert row.driving_ratio_se == pytest.approx(ratio_se, rel=1e-12)
        assert columns["departure"] == pytest.approx([f[row.layer].departure for f in forces], rel=1e-5)
        assert row.lyapunov_se > 0 and row.driving_ratio > 0 and row.force_ratio > 0 and row.departure > 0


def test_per_layer_report_gives_the_force_ratio_of_layer_forces():
    layers, per_sequence, forces = report_and_forces()
    for row in layers:
        column = [s.force_ratio[row.layer] for s in per_sequence]
        assert column == pytest.approx([f[row.layer].force_ratio for f in forces], rel=1e-5)
