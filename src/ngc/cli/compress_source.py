"""Where ``ngc compress`` reads the model from, and which method defaults that allows.

A local safetensors folder is streamed layer by layer unless the configuration needs the whole model (gradients
through it, distillation, auto allocation or topology). A method's defaults may need the whole model (ngc's loss
allocation) or one process (block refinement); where they cannot run, the defaults the user did not set are
replaced by the method's ``streamed`` / ``multi_process`` ones, and the run says so:

- ``--stream``, or a model whose whole load would not fit in memory: streamed, with the streamed defaults;
- several processes (torchrun): the multi-process defaults.

Options the user set are never changed; a set option that cannot run is refused with the reason.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ngc.config import GRADIENT_ALLOCATIONS, CompressionConfig
from ngc.errors import UsageError

#: loading whole for a gradient pass needs the weights, their gradients and the activations: about this many times
#: the weights' bytes
WHOLE_MODEL_FACTOR = 2.5


def needs_whole_model(config: CompressionConfig) -> str | None:
    """Why ``config`` cannot stream layer by layer (None when it can)."""
    from ngc.api import AUTO
    from ngc.fit.methods import get_method

    if get_method(config.method).needs_fisher:
        return "fwsvd's Fisher information needs backward passes through the whole model"
    if config.refines("distill"):
        return "distillation trains the whole model"
    if config.alloc in GRADIENT_ALLOCATIONS:
        return f"{config.alloc} allocation scores components by loss gradients: backward passes through the whole model"
    if config.alloc != "uniform" or config.topology == AUTO:
        return "auto allocation and auto topology compare every group before fitting any"
    return None


def adapt_defaults(
    config: CompressionConfig, given: frozenset[str], *, streamed: bool = False, processes: int = 1
) -> tuple[CompressionConfig, list[str]]:
    """``config`` with the method's streamed / multi-process defaults in place of the defaults the user did not
    set (``given`` names the fields that were set), and one line per change."""
    from ngc.fit.methods import get_method

    method = get_method(config.method)
    wanted: dict[str, object] = {}
    if streamed:
        wanted |= dict(method.streamed)
    if processes > 1:
        wanted |= dict(method.multi_process)
    changes = {k: v for k, v in wanted.items() if k not in given and getattr(config, k) != v}
    if not changes:
        return config, []
    why = "streamed layer by layer" if streamed else f"{processes} processes"
    notes = [
        f"{name}: {getattr(config, name)} -> {value} ({why}; set --{name.replace('_', '-')} to choose)"
        for name, value in changes.items()
    ]
    return dataclasses.replace(config, **changes), notes


def whole_model_bytes(folder: Path, dtype: torch.dtype) -> int:
    """Bytes of the folder's model in ``dtype`` (from its structure; nothing is read)."""
    from ngc.pipeline.source import skeleton

    return sum(p.numel() for p in skeleton(folder, dtype).parameters()) * dtype.itemsize


def free_memory(device: str) -> int:
    """Bytes free where a whole model would be loaded: the GPU's memory, else the host's available RAM."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.mem_get_info(torch.device(device))[0]
    import psutil

    return psutil.virtual_memory().available


def whole_model_fits(folder: Path, dtype: torch.dtype, device: str) -> bool:
    return WHOLE_MODEL_FACTOR * whole_model_bytes(folder, dtype) <= free_memory(device)


def stream_folder(
    model: str,
    config: CompressionConfig,
    given: frozenset[str],
    stream: bool | None,
    *,
    dtype: torch.dtype,
    device: str,
    cache: Path | None,
) -> tuple[Path | None, CompressionConfig, list[str]]:
    """The folder to stream from (None: load the model whole), the configuration to run, and notes on changed
    defaults. ``stream``: True (``--stream``), False (``--no-stream``) or None (decide)."""
    from ngc.models.load import resolve_model
    from ngc.pipeline.source import read_index
    from ngc.settings import cache_dir

    if stream is False:
        return None, config, []
    where, from_hub = resolve_model(model, cache_dir(cache))
    if from_hub:
        if stream:
            raise UsageError(
                "--stream cannot be used here: a hub id is loaded by transformers, not streamed",
                hint="drop --stream (the model is then loaded whole)",
            )
        return None, config, []
    folder = Path(where)
    read_index(folder)  # refuses a folder without safetensors weights, with the reason
    reason = needs_whole_model(config)
    if reason is None:
        return folder, config, []
    streamable, notes = adapt_defaults(config, given, streamed=True)
    if needs_whole_model(streamable) is None and (stream or not whole_model_fits(folder, dtype, device)):
        if not stream:
            notes.insert(0, f"{model} would not fit in memory whole: streaming it layer by layer")
        return folder, streamable, notes
    if stream:
        raise UsageError(
            f"--stream cannot be used here: {reason}",
            hint="drop --stream (the model is then loaded whole), or choose options that stream (e.g. --alloc uniform)",
        )
    return None, config, []
