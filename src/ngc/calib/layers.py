"""Run a decoder one layer at a time on calibration windows (memory: the windows' hidden states + one layer).

One cheap pass with every decoder layer replaced by a pass-through records what the model hands each layer
(masks, position embeddings, per-layer-type variants) without copying modeling code. Afterwards layer ``l``
can be run alone on the outputs of layer ``l-1``. A layer's call is bound to its ``forward`` signature, so
arguments passed by position (GPT-2 passes its causal mask positionally) are kept, by name.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ngc.arch import decoder_layers


@dataclass
class LayerCalls:
    """For each batch of windows: the hidden states entering layer 0, and each layer's keyword arguments."""

    hidden: list[torch.Tensor]  # per batch, (b, L, d)
    kwargs: list[list[dict[str, Any]]]  # [layer][batch]


def _backbone(model: nn.Module) -> nn.Module:
    """The model without its LM head (saves the head's cost in the recording pass)."""
    base = getattr(model, "base_model", None)
    return base if isinstance(base, nn.Module) and base is not model else model


def bind_call(forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """``(hidden states, every other argument by name)`` of one call of a layer's bound ``forward``."""
    signature = inspect.signature(forward)
    bound = signature.bind(*args, **kwargs)
    named: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise TypeError(f"{forward.__qualname__} received {len(value)} extra positional argument(s)")
        else:
            named[name] = value
    first = next(iter(signature.parameters))
    return named.pop(first), named


@contextmanager
def _pass_through(layers: nn.ModuleList, calls: LayerCalls) -> Iterator[None]:
    def recorder(index: int, layer: nn.Module):
        original = layer.forward

        def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
            hidden, named = bind_call(original, args, kwargs)
            if index == 0:
                calls.hidden.append(hidden.detach())
            calls.kwargs[index].append(named)
            return hidden

        return forward

    for index, layer in enumerate(layers):
        layer.forward = recorder(index, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def batches(windows: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """``windows`` (N, L) cut into consecutive batches of at most ``batch_size`` rows."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    return list(windows.split(batch_size, dim=0))


@torch.no_grad()
def record_layer_calls(model: nn.Module, windows: torch.Tensor, batch_size: int = 1) -> LayerCalls:
    """The per-layer inputs of every batch of ``windows`` ((N, L) token ids), from one pass-through run."""
    layers = decoder_layers(model)
    calls = LayerCalls(hidden=[], kwargs=[[] for _ in layers])
    device = _input_device(model)
    with _pass_through(layers, calls):
        for rows in batches(windows, batch_size):
            _backbone(model)(input_ids=rows.to(device), use_cache=False)
    return calls


def _input_device(model: nn.Module) -> torch.device:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(embeddings, nn.Module):
        weight = getattr(embeddings, "weight", None)
        if isinstance(weight, torch.Tensor):
            return weight.device
    return next(model.parameters()).device


def run_layer(layer: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """One decoder layer on one batch; its new hidden states."""
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out
