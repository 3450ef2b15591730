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
) -> Iterator[tuple[int, dict[str, InputMoments]]]:
    """Yield ``(layer, {input key: moments})`` for each decoder layer holding a member, in layer order.

    Only one layer's statistics exist at a time unless the caller keeps them.
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


class _StopForward(Exception):
    """Raised by a hook once the input it waits for is captured: the rest of the layer need not run."""


@torch.no_grad()
def stream_sequential_moments(
    model: nn.Module, windows: torch.Tensor, members: Sequence[Member]
) -> Iterator[tuple[int, dict[str, InputMoments]]]:
    """Like :func:`stream_layer_moments`, for the sequential update (SPEC §4), one input at a time.

    Two streams run side by side: the dense model's hidden states, and those of the model as compressed so far.
    For each input the moments hold ``C̃ = Σ x̃ x̃ᵀ`` (``second``) and ``M = Σ x̃ xᵀ`` (``cross``), where ``x`` is
    what the dense model feeds the block and ``x̃`` what the model compressed so far feeds it. Inputs are yielded
    in the order the layer reads them (q/k/v, o, gate/up, down); after each, the caller may replace the blocks
    that read it, so that o is fitted on what the compressed q, k, v produce, and down on the compressed
    gate, up. Memory: the dense inputs of one layer for all windows, and two streams of hidden states.
    """
    layers = decoder_layers(model)
    by_layer = _by_layer(members)
    last = max(by_layer, default=-1)
    calls = record_layer_calls(model, windows)
    dense = calls.hidden
    compressed = list(calls.hidden)
    for index in progress(range(last + 1), desc="calibration, sequential (layers)", unit="layer"):
        layer, kwargs = layers[index], calls.kwargs[index]
        wanted = _hook_modules(model, by_layer.get(index, []))
        captured, handles = _capture_inputs(model, wanted)
        dense_inputs: list[dict[str, torch.Tensor]] = []
        try:
            for w in range(len(dense)):
                dense[w] = run_layer(layer, dense[w], kwargs[w])
                dense_inputs.append(dict(captured))
        finally:
            for handle in handles:
                handle.remove()
        for key in list(dense_inputs[0]) if dense_inputs else []:  # the order the forward reached them
            moments = InputMoments(_input_width(by_layer[index], key))
            seen: list[torch.Tensor] = []

            def stop(_module: nn.Module, args: tuple[torch.Tensor, ...], seen: list = seen) -> None:
                seen.append(args[0].detach())
                raise _StopForward

            handle = model.get_submodule(wanted[key]).register_forward_pre_hook(stop)
            try:
                for w in range(len(compressed)):
                    try:
                        run_layer(layer, compressed[w], kwargs[w])
                    except _StopForward:
                        pass
                    moments.add_pair(seen.pop(), dense_inputs[w].pop(key))
            finally:
                handle.remove()
            yield index, {key: moments}
        compressed = [run_layer(layer, h, kw) for h, kw in zip(compressed, kwargs, strict=True)]
