"""Force and departure relative to a reference (SPEC §8.3)."""

from __future__ import annotations

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


def test_per_layer_report_on_a_tiny_model():
    from ngc.dynamics.report import measure_dynamics

    reference = build_tiny_model("llama")
    model = build_tiny_model("llama")
    compress(model, CompressionConfig(method="svd", ratio=0.5))
    sequences = torch.randint(0, 250, (3, 24), generator=torch.Generator().manual_seed(1))
    layers = measure_dynamics(model, sequences, reference, probes=3, lanczos_steps=6)
    assert [row.layer for row in layers] == [0, 1]
    for row in layers:
        assert all(map(lambda v: v == v, (row.lyapunov, row.divergence, row.sym_top, row.driving_ratio)))
        assert row.lyapunov_se >= 0 and row.driving_ratio > 0 and row.force_ratio > 0 and row.departure > 0
