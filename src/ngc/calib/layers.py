"""Run a decoder one layer at a time on calibration windows (memory: the windows' hidden states + one layer).

One cheap pass with every decoder layer replaced by a pass-through records what the model hands each layer
(masks, position embeddings, per-layer-type variants) without copying modeling code. Afterwards layer ``l``
can be run alone on the outputs of layer ``l-1``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ngc.arch import decoder_layers


@dataclass
class LayerCalls:
    """For each window: the hidden states entering layer 0, and each layer's keyword arguments."""

    hidden: list[torch.Tensor]  # per window, (1, L, d)
    kwargs: list[list[dict[str, Any]]]  # [layer][window]


def _backbone(model: nn.Module) -> nn.Module:
    """The model without its LM head (saves the head's cost in the recording pass)."""
    base = getattr(model, "base_model", None)
    return base if isinstance(base, nn.Module) and base is not model else model


@contextmanager
def _pass_through(layers: nn.ModuleList, calls: LayerCalls) -> Iterator[None]:
    def recorder(index: int):
        def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
            hidden = args[0] if args else kwargs.pop("hidden_states")
            if index == 0:
                calls.hidden.append(hidden.detach())
            calls.kwargs[index].append({k: v for k, v in kwargs.items() if k != "hidden_states"})
            return hidden

        return forward

    for index, layer in enumerate(layers):
        layer.forward = recorder(index)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


@torch.no_grad()
def record_layer_calls(model: nn.Module, windows: torch.Tensor) -> LayerCalls:
    """The per-layer inputs of every window (``windows``: (N, L) token ids), from one pass-through run."""
    layers = decoder_layers(model)
    calls = LayerCalls(hidden=[], kwargs=[[] for _ in layers])
    device = next(model.parameters()).device
    with _pass_through(layers, calls):
        for row in windows:
            _backbone(model)(input_ids=row.unsqueeze(0).to(device), use_cache=False)
    return calls


def run_layer(layer: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """One decoder layer on one window; its new hidden states."""
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out
