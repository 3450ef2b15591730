"""Second moments of every compressed input, streamed layer by layer (SPEC §4)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ngc.arch import decoder_layers
from ngc.calib.layers import record_layer_calls, run_layer
from ngc.calib.moments import InputMoments
from ngc.progress import progress
from ngc.topology.blocks import Member


def _hook_modules(model: nn.Module, members: Sequence[Member]) -> dict[str, str]:
    """input key -> the one module whose input is recorded for it (inputs shared by q/k/v are recorded once)."""
    chosen: dict[str, str] = {}
    for member in members:
        chosen.setdefault(member.input_key, member.module)
    return chosen


def _record(moments: InputMoments) -> Callable[..., None]:
    def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        moments.add(args[0])

    return hook


@torch.no_grad()
def stream_layer_moments(
    model: nn.Module,
    windows: torch.Tensor,
    members: Sequence[Member],
    after_layer: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, dict[str, InputMoments]]]:
    """Yield ``(layer, {input key: moments})`` for each decoder layer holding a member, in layer order.

    Only one layer's statistics exist at a time unless the caller keeps them. ``after_layer(l)`` runs once
    layer ``l``'s outputs are computed (the caller may then replace that layer's modules).
    """
    layers = decoder_layers(model)
    by_layer = _by_layer(members)
    last = max(by_layer, default=-1)
    calls = record_layer_calls(model, windows)
    hidden = calls.hidden
    for index in progress(range(last + 1), desc="calibration (layers)", unit="layer"):
        layer = layers[index]
        wanted = _hook_modules(model, by_layer.get(index, []))
        moments = {key: InputMoments(_input_width(by_layer[index], key)) for key in wanted}
        handles = [
            model.get_submodule(name).register_forward_pre_hook(_record(moments[key])) for key, name in wanted.items()
        ]
        try:
            hidden = [run_layer(layer, h, kw) for h, kw in zip(hidden, calls.kwargs[index], strict=True)]
        finally:
            for handle in handles:
                handle.remove()
        if after_layer is not None:
            after_layer(index)
        if wanted:
            yield index, moments


def _by_layer(members: Sequence[Member]) -> dict[int, list[Member]]:
    by_layer: dict[int, list[Member]] = {}
    for member in members:
        by_layer.setdefault(member.layer, []).append(member)
    return by_layer


def _input_width(members: Sequence[Member], key: str) -> int:
    return next(m.n for m in members if m.input_key == key)


@dataclass
class CalibrationStats:
    """Every compressed input's moments kept at once, to fit several configurations from one pass."""

    moments: dict[str, InputMoments] = field(default_factory=dict)
    fisher: dict[str, torch.Tensor] | None = None  # member id -> per-input-channel Fisher information
    tokens: torch.Tensor | None = None  # the (N, L) windows, for steps that need activations (distillation)
    n_windows: int = 0
    window_len: int = 0
    source: str = ""
    split: str | None = None
    seed: int = 0

    def layers(self) -> Iterator[tuple[int, dict[str, InputMoments]]]:
        by_layer: dict[int, dict[str, InputMoments]] = {}
        for key, value in self.moments.items():
            by_layer.setdefault(int(key[1:].split(":")[0]), {})[key] = value
        yield from sorted(by_layer.items())


def _capture_inputs(model: nn.Module, wanted: dict[str, str]) -> tuple[dict[str, torch.Tensor], list]:
    captured: dict[str, torch.Tensor] = {}

    def keep(key: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            captured[key] = args[0].detach()

        return hook

    handles = [model.get_submodule(name).register_forward_pre_hook(keep(key)) for key, name in wanted.items()]
    return captured, handles


@torch.no_grad()
def stream_sequential_moments(
    model: nn.Module, windows: torch.Tensor, members: Sequence[Member]
) -> Iterator[tuple[int, dict[str, InputMoments]]]:
    """Like :func:`stream_layer_moments`, for the sequential update (SPEC §4).

    Two streams run side by side: the dense model's hidden states, and those of the model as compressed so far.
    For each input the moments hold ``C̃ = Σ x̃ x̃ᵀ`` (``second``) and ``M = Σ x̃ xᵀ`` (``cross``), where ``x̃`` is
    what the compressed prefix feeds the (still dense) layer and ``x`` what the dense model feeds it. After a
    layer is yielded the caller may replace its modules; the compressed stream then runs the replaced layer.
    """
    layers = decoder_layers(model)
    by_layer = _by_layer(members)
    last = max(by_layer, default=-1)
    calls = record_layer_calls(model, windows)
    dense = calls.hidden
    compressed = list(calls.hidden)
    for index in progress(range(last + 1), desc="calibration, sequential (layers)", unit="layer"):
        layer = layers[index]
        wanted = _hook_modules(model, by_layer.get(index, []))
        moments = {key: InputMoments(_input_width(by_layer[index], key)) for key in wanted}
        captured, handles = _capture_inputs(model, wanted)
        try:
            for w, kwargs in enumerate(calls.kwargs[index]):
                dense_out = run_layer(layer, dense[w], kwargs)
                dense_inputs = dict(captured)
                if wanted:
                    run_layer(layer, compressed[w], kwargs)
                    for key in wanted:
                        moments[key].add_pair(captured[key], dense_inputs[key])
                dense[w] = dense_out
        finally:
            for handle in handles:
                handle.remove()
        if wanted:
            yield index, moments
        compressed = [run_layer(layer, h, kw) for h, kw in zip(compressed, calls.kwargs[index], strict=True)]
