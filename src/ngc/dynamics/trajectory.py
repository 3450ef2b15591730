"""Hidden states per decoder layer (the residual stream after each layer, SPEC §8) as a function of embeddings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ngc.arch import decoder_layers


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Plain attention while measuring: forward-mode AD (JVP) is not defined for every fused attention kernel."""
    config = model.config
    previous = getattr(config, "_attn_implementation", None)
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if previous is not None and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(previous)


def layer_states(model: nn.Module, embeds: torch.Tensor) -> torch.Tensor:
    """(layers, T, d): each decoder layer's output for one sequence of input embeddings ``embeds`` (T, d)."""
    outputs: list[torch.Tensor] = []

    def keep(_module: nn.Module, _args: tuple, output: torch.Tensor | tuple) -> None:
        outputs.append((output[0] if isinstance(output, tuple) else output)[0])

    handles = [layer.register_forward_hook(keep) for layer in decoder_layers(model)]
    try:
        model(inputs_embeds=embeds.unsqueeze(0), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(outputs)
