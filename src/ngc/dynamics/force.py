"""Force relative to a reference (SPEC §8.3): how a compressed model's layer updates differ from the dense ones.

For layer ℓ with update ``F^ℓ(h) = layer(h) − h``, on the reference's own trajectory ``h`` (the dense model's
layer inputs): force ratio ``‖F_c(h) − F_r(h)‖ / ‖F_r(h)‖``. Trajectory departure compares each model on its own
trajectory: ``‖h_c^ℓ − h_r^ℓ‖ / ‖h_r^ℓ‖`` after layer ℓ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ngc.arch import decoder_layers
from ngc.calib.layers import record_layer_calls, run_layer


@dataclass(frozen=True)
class LayerForce:
    layer: int
    force_ratio: float
    departure: float


@torch.no_grad()
def layer_forces(model: nn.Module, reference: nn.Module, tokens: torch.Tensor) -> list[LayerForce]:
    """Per layer force ratio and departure for one sequence ``tokens`` (T,); the two models share a config."""
    ids = tokens.unsqueeze(0)
    calls = record_layer_calls(reference, ids)
    own = record_layer_calls(model, ids)
    h_ref, h_own = calls.hidden[0], own.hidden[0]
    results = []
    for index, (layer_ref, layer_own) in enumerate(zip(decoder_layers(reference), decoder_layers(model), strict=True)):
        kwargs = calls.kwargs[index][0]
        next_ref = run_layer(layer_ref, h_ref, kwargs)
        update_ref = next_ref - h_ref
        update_own = run_layer(layer_own, h_ref, kwargs) - h_ref  # the compressed layer on the dense trajectory
        next_own = run_layer(layer_own, h_own, own.kwargs[index][0])
        results.append(
            LayerForce(
                index,
                float((update_own - update_ref).norm() / update_ref.norm().clamp_min(1e-30)),
                float((next_own - next_ref).norm() / next_ref.norm().clamp_min(1e-30)),
            )
        )
        h_ref, h_own = next_ref, next_own
    return results
