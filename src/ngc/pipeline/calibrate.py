"""The calibration stage: run one decoder layer on the cached hidden states and accumulate its inputs' moments.

Two ways, both on the compute device:
- :func:`calibrate_layer`: the dense stream. Hooks on the modules the layer's members read accumulate ``C`` while
  the layer runs; its outputs become the next layer's inputs.
- :func:`calibrate_sequential`: the sequential update (SPEC §4) with two streams, the dense model's and the model
  compressed so far. For each input, in the order the layer reads them, both streams are run up to that input
  (the rest of the layer is skipped) and ``C̃ = Σ x̃ x̃ᵀ``, ``M = Σ x̃ xᵀ`` are accumulated; the groups it
  completes are fitted before the next input, so o is fitted on what the compressed q, k, v produce. A copy of
  the dense layer serves the dense stream; only one batch's inputs exist at a time.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ngc.calib.layers import run_layer
from ngc.calib.moments import InputMoments
from ngc.pipeline.distributed import World
from ngc.topology.blocks import Member


@dataclass
class Streams:
    """Hidden states entering the current layer, per batch: the dense stream and, for the sequential update,
    the compressed one. Kept on ``storage`` (the compute device, or the host when they do not fit there)."""

    dense: list[torch.Tensor]
    compressed: list[torch.Tensor] | None
    kwargs: list[list[dict[str, Any]]]  # [layer][batch], on the compute device
    storage: torch.device
    device: torch.device

    def batch(self, stream: list[torch.Tensor], b: int) -> torch.Tensor:
        return stream[b].to(self.device, non_blocking=True)

    def store(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.to(self.storage, non_blocking=True)

    def __len__(self) -> int:
        return len(self.dense)


@dataclass(frozen=True)
class StatsOptions:
    """Where and how moments accumulate."""

    device: torch.device
    precision: str = "float64"


def _hooked_modules(members: Sequence[Member], prefix: str) -> dict[str, str]:
    """input key -> the module (relative to the layer) whose input is recorded for it, once per shared input."""
    chosen: dict[str, str] = {}
    for member in members:
        chosen.setdefault(member.input_key, member.module.removeprefix(prefix))
    return chosen


def _width(members: Sequence[Member], key: str) -> int:
    return next(m.n for m in members if m.input_key == key)


@torch.no_grad()
def calibrate_layer(
    layer: nn.Module,
    index: int,
    prefix: str,
    members: Sequence[Member],
    streams: Streams,
    options: StatsOptions,
    world: World,
) -> dict[str, InputMoments]:
    """Moments of every input of ``layer``'s members on the dense stream; the stream advances past the layer."""
    wanted = _hooked_modules(members, prefix)
    moments = {key: InputMoments(_width(members, key), options.device, options.precision) for key in wanted}

    def record(stats: InputMoments) -> Callable[..., None]:
        return lambda _module, args: stats.add(args[0])

    handles = [layer.get_submodule(name).register_forward_pre_hook(record(moments[k])) for k, name in wanted.items()]
    try:
        for b in range(len(streams)):
            streams.dense[b] = streams.store(
                run_layer(layer, streams.batch(streams.dense, b), streams.kwargs[index][b])
            )
    finally:
        for handle in handles:
            handle.remove()
    for stats in moments.values():
        world.all_reduce(stats)
    return moments


class _Reached(Exception):
    """Raised by a hook once the input it waits for is captured: the rest of the layer need not run."""


def capture_input(layer: nn.Module, module: str, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """What ``layer`` feeds its submodule ``module`` on ``hidden``, running the layer only that far."""
    seen: list[torch.Tensor] = []

    def stop(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.append(args[0].detach())
        raise _Reached

    handle = layer.get_submodule(module).register_forward_pre_hook(stop)
    try:
        run_layer(layer, hidden, kwargs)
    except _Reached:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError(f"the layer never called {module}")
    return seen[0]


def input_order(layer: nn.Module, wanted: dict[str, str], hidden: torch.Tensor, kwargs: dict[str, Any]) -> list[str]:
    """The input keys in the order the layer's forward reaches them (one batch, one pass)."""
    order: list[str] = []
    handles = [
        layer.get_submodule(name).register_forward_pre_hook(
            lambda _m, _args, key=key: order.append(key) if key not in order else None
        )
        for key, name in wanted.items()
    ]
    try:
        run_layer(layer, hidden, kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return order


@torch.no_grad()
def calibrate_sequential(
    layer: nn.Module,
    index: int,
    prefix: str,
    members: Sequence[Member],
    streams: Streams,
    options: StatsOptions,
    world: World,
    fit_ready: Callable[[dict[str, InputMoments]], None],
    refine_block: Callable[[nn.Module, int, Streams], None] | None = None,
) -> None:
    """Per input of ``layer``: moments ``C̃``, ``M`` over both streams, then ``fit_ready`` (which may swap modules
    of ``layer``). Both streams advance past the layer: the dense copy on the dense stream, ``layer`` as
    compressed on the compressed one. ``refine_block`` (block-wise refinement, SPEC §5) runs in between: the
    dense stream already holds the dense layer's outputs, the compressed one still this layer's inputs."""
    assert streams.compressed is not None
    kwargs = streams.kwargs[index]
    wanted = _hooked_modules(members, prefix)
    dense_layer = copy.deepcopy(layer)  # the dense weights, for the dense stream, while layer is being swapped
    for key in input_order(dense_layer, wanted, streams.batch(streams.dense, 0), kwargs[0]):
        stats = InputMoments(_width(members, key), options.device, options.precision)
        for b in range(len(streams)):
            x = capture_input(dense_layer, wanted[key], streams.batch(streams.dense, b), kwargs[b])
            x_tilde = capture_input(layer, wanted[key], streams.batch(streams.compressed, b), kwargs[b])
            stats.add_pair(x_tilde, x)
        world.all_reduce(stats)
        fit_ready({key: stats})
    for b in range(len(streams)):
        streams.dense[b] = streams.store(run_layer(dense_layer, streams.batch(streams.dense, b), kwargs[b]))
    del dense_layer
    if refine_block is not None:
        refine_block(layer, index, streams)
    advance_compressed(layer, index, streams)


@torch.no_grad()
def advance_compressed(layer: nn.Module, index: int, streams: Streams) -> None:
    """The compressed stream through ``layer`` as it is now."""
    assert streams.compressed is not None
    for b in range(len(streams)):
        streams.compressed[b] = streams.store(
            run_layer(layer, streams.batch(streams.compressed, b), streams.kwargs[index][b])
        )
