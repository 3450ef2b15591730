"""The layer-sequential pipeline: the one way every compression runs, in memory or streamed from disk.

For each decoder layer, in order:

1. onload: the source brings the layer's weights to the compute device;
2. calibrate: the cached hidden states run through it while its inputs' moments accumulate on the device
   (summed over ranks when several processes run);
3. fit: every group whose inputs have all been seen is fitted and its modules are swapped in;
4. advance: the layer's outputs become the next layer's inputs (dense and, for the sequential update,
   compressed streams);
5. release: once no pending group has a member in the layers in flight, they go home or are written out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ngc.arch import decoder_layers
from ngc.calib.layers import record_layer_calls, run_layer
from ngc.calib.moments import InputMoments, default_precision
from ngc.errors import NgcError
from ngc.pipeline.calibrate import (
    StatsOptions,
    Streams,
    advance_compressed,
    calibrate_layer,
    calibrate_sequential,
)
from ngc.pipeline.distributed import World
from ngc.pipeline.fitting import GroupFitter
from ngc.pipeline.source import FolderSource, ModelSource, Sink, layer_prefix
from ngc.progress import progress
from ngc.topology.blocks import Member

Source = ModelSource | FolderSource


@dataclass(frozen=True)
class PipelineOptions:
    """Where the pipeline computes and how it holds calibration data.

    ``device``: the compute device (layers, moments and fits run there). ``batch_size``: calibration windows
    per forward. ``precision``: of the moments' batch products (None: float64 on the CPU, float32 on a GPU).
    ``hidden_on``: where the cached hidden states live between layers: ``device``, ``host``, or ``auto``
    (the device when they take at most half of its free memory).
    """

    device: str = "cpu"
    batch_size: int = 1
    precision: str | None = None
    hidden_on: str = "auto"

    def stats(self) -> StatsOptions:
        device = torch.device(self.device)
        return StatsOptions(device, self.precision or default_precision(device))


def by_layer(members: Sequence[Member]) -> dict[int, list[Member]]:
    layers: dict[int, list[Member]] = {}
    for member in members:
        layers.setdefault(member.layer, []).append(member)
    return layers


def _to_device(value: Any, device: torch.device, memo: dict[int, Any]) -> Any:
    """Tensors inside ``value`` (nested tuples/lists/dicts) on ``device``; one copy per tensor object."""
    if isinstance(value, torch.Tensor):
        if id(value) not in memo:
            memo[id(value)] = value.to(device)
        return memo[id(value)]
    if isinstance(value, tuple):
        return tuple(_to_device(v, device, memo) for v in value)
    if isinstance(value, list):
        return [_to_device(v, device, memo) for v in value]
    if isinstance(value, dict):
        return {k: _to_device(v, device, memo) for k, v in value.items()}
    return value


def _storage(options: PipelineOptions, hidden: Sequence[torch.Tensor], streams: int) -> torch.device:
    device = torch.device(options.device)
    if options.hidden_on == "host" or device.type == "cpu":
        return torch.device("cpu")
    if options.hidden_on == "device":
        return device
    needed = streams * sum(h.numel() * h.element_size() for h in hidden)
    free, _total = torch.cuda.mem_get_info(device) if device.type == "cuda" else (needed * 2, 0)
    return device if needed <= free / 2 else torch.device("cpu")


def record_streams(model: nn.Module, windows: torch.Tensor, options: PipelineOptions, sequential: bool) -> Streams:
    """The hidden states entering layer 0 for every batch, and every layer's other arguments."""
    calls = record_layer_calls(model, windows, options.batch_size)
    device = torch.device(options.device)
    storage = _storage(options, calls.hidden, 2 if sequential else 1)
    memo: dict[int, Any] = {}
    kwargs = [[_to_device(kw, device, memo) for kw in layer] for layer in calls.kwargs]
    dense = [h.to(storage) for h in calls.hidden]
    compressed = [h.clone() for h in dense] if sequential else None
    return Streams(dense, compressed, kwargs, storage, device)


def _advance(layer: nn.Module, index: int, streams: Streams) -> None:
    """Run a layer without members on every stream."""
    with torch.no_grad():
        for stream in (streams.dense, streams.compressed):
            if stream is None:
                continue
            for b in range(len(streams)):
                stream[b] = streams.store(run_layer(layer, streams.batch(stream, b), streams.kwargs[index][b]))


def run_pipeline(
    source: Source,
    members: Sequence[Member],
    fitter: GroupFitter,
    windows: torch.Tensor | None,
    stats: Mapping[str, InputMoments] | None,
    options: PipelineOptions,
    world: World,
    sink: Sink | None = None,
) -> None:
    """Compress ``source.model`` layer by layer (see the module docstring); ``sink`` receives finished layers."""
    model = source.model
    layers = decoder_layers(model)
    members_of = by_layer(members)
    last = max(members_of, default=-1)
    sequential = bool(fitter.config.sequential)
    refine_block = fitter.refine_block if fitter.config.refines("block") else None  # needs both streams
    streams = None
    if stats is None and windows is not None:
        streams = record_streams(model, world.share(windows), options, sequential or refine_block is not None)
    in_flight: list[int] = []
    for index in progress(range(len(layers)), desc="compressing (layers)", unit="layer"):
        if index > last and sink is None:
            break
        with _device_memory(index, options):
            _one_layer(source, index, members_of.get(index, []), last, fitter, streams, stats, options, world)
        in_flight.append(index)
        if all(fitter.layer_complete(i) for i in in_flight):
            source.release(in_flight, sink)
            in_flight = []
    source.release(in_flight, sink)
    source.finish(sink)


@contextmanager
def _device_memory(index: int, options: PipelineOptions) -> Iterator[None]:
    """A layer that does not fit on the device is one clear error, with what to change."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise NgcError(
            f"layer {index} with its calibration batch does not fit on {options.device}: {str(exc).splitlines()[0]}",
            hint="use --calib-batch 1 and --hidden-on host, a smaller --calib-len, bfloat16 (--dtype), or more "
            "processes (torchrun) so each holds fewer windows",
        ) from exc


def _one_layer(
    source: Source,
    index: int,
    here: list[Member],
    last: int,
    fitter: GroupFitter,
    streams: Streams | None,
    stats: Mapping[str, InputMoments] | None,
    options: PipelineOptions,
    world: World,
) -> None:
    """Onload, calibrate, fit and advance one layer (the stages of the module docstring)."""
    model = source.model
    sequential = bool(fitter.config.sequential)
    stats_options = options.stats()
    refine_block = fitter.refine_block if fitter.config.refines("block") else None
    layer = source.onload(index)
    prefix = layer_prefix(model, index)
    if here and stats is not None:
        fitter.add({key: value for key, value in stats.items() if key.startswith(f"L{index}:")})
        fitter.fit_ready()
    elif here and streams is not None and sequential:

        def fit_ready(moments: dict[str, InputMoments]) -> None:
            fitter.add(moments)
            fitter.fit_ready()

        calibrate_sequential(layer, index, prefix, here, streams, stats_options, world, fit_ready, refine_block)
    elif here and streams is not None:
        fitter.add(calibrate_layer(layer, index, prefix, here, streams, stats_options, world))
        fitter.fit_ready()
        if refine_block is not None:  # dense stream advanced by the dense layer; now the compressed one
            refine_block(layer, index, streams)
            advance_compressed(layer, index, streams)
    elif streams is not None and index <= last:
        _advance(layer, index, streams)
    elif here:  # methods without statistics (plain SVD): nothing to wait for
        fitter.seen.update(m.input_key for m in here)
        fitter.fit_ready()


def collect_moments(
    source: Source, members: Sequence[Member], windows: torch.Tensor, options: PipelineOptions, world: World
) -> dict[str, InputMoments]:
    """Every compressed input's moments on the dense stream, kept on the host (to fit many configurations)."""
    model = source.model
    members_of = by_layer(members)
    last = max(members_of, default=-1)
    streams = record_streams(model, world.share(windows), options, sequential=False)
    kept: dict[str, InputMoments] = {}
    for index in progress(range(last + 1), desc="calibration (layers)", unit="layer"):
        layer = source.onload(index)
        here = members_of.get(index, [])
        if here:
            moments = calibrate_layer(layer, index, layer_prefix(model, index), here, streams, options.stats(), world)
            kept.update({key: value.to("cpu") for key, value in moments.items()})
        else:
            _advance(layer, index, streams)
        source.release([index])
    return kept
