"""``compress_folder``: a Hugging Face model folder in, a checkpoint folder out, one layer in memory at a time.

The model is never materialised whole: :class:`~ngc.pipeline.source.FolderSource` reads each layer from the
shards when its turn comes, and each finished layer goes straight to the checkpoint's
:class:`~ngc.checkpoint.shards.ShardWriter`. The checkpoint is written into a temporary folder renamed into
place at the end, so an interrupted run leaves no partial checkpoint where a complete one is expected. Under
several processes every rank calibrates and fits its share; rank 0 alone writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ngc.atomic import atomic_folder
from ngc.config import CompressionConfig
from ngc.pipeline.distributed import World
from ngc.pipeline.run import PipelineOptions
from ngc.pipeline.source import FolderSource


def compress_folder(
    folder: str | Path,
    out: str | Path,
    config: CompressionConfig,
    calibration: Any,
    options: PipelineOptions | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    save_dtype: torch.dtype | None = None,
    tokenizer: Any = None,
    force: bool = False,
    world: World | None = None,
    base_name: str | None = None,
    max_shard_bytes: int | None = None,
    factor_dtype: str = "float",
):
    """Compress the model in ``folder`` layer by layer into the checkpoint folder ``out``; returns the result.

    ``dtype`` is the compute dtype (each tensor is cast as it is read); ``save_dtype`` the stored one
    (default: ``dtype``). ``calibration``: token windows, as for :func:`ngc.compress`. ``max_shard_bytes``: the
    size of each checkpoint shard (default: the writer's, 2 GiB). ``factor_dtype="int8"``: each finished layer's
    factors are written int8 (:mod:`ngc.modules.int8`, what ``quantize_factors`` makes of a model in memory).
    """
    from ngc.accounting import account
    from ngc.api import compress_source
    from ngc.checkpoint.save import add_guard, base_record, write_checkpoint_files
    from ngc.checkpoint.shards import DEFAULT_MAX_SHARD_BYTES, ShardWriter
    from ngc.modules.int8 import INT8, check_factor_dtype, int8_sink, quantize_factors, require_torchao

    if check_factor_dtype(factor_dtype) == INT8:
        require_torchao()
    options = options or PipelineOptions()
    world = world or World()
    source = FolderSource(folder, dtype=dtype, device=options.device)
    if not world.is_main:
        result = compress_source(source, config, calibration, options, world)
        world.barrier()
        return result
    from ngc.api import plan

    _method, _members, groups, _ranks = plan(source.model, config)
    with atomic_folder(out, replace=force) as tmp:
        writer = ShardWriter(tmp, dtype=save_dtype, max_shard_bytes=max_shard_bytes or DEFAULT_MAX_SHARD_BYTES)
        add_guard(writer, groups)
        sink = int8_sink(writer.add) if factor_dtype == INT8 else writer.add
        result = compress_source(source, config, calibration, options, world, sink=sink)
        if factor_dtype == INT8:
            quantize_factors(source.model, empty=True)  # the structure (on meta) as written, for its accounting
            result.accounting = account(source.model)
        tensor_bytes = writer.finish()
        base = base_record(source.model, result) | {
            "name": base_name or str(folder),
            "folder": str(Path(folder).resolve()),
            "weights_dtype": str(dtype).removeprefix("torch."),  # the dtype the hash was taken in
        }
        write_checkpoint_files(
            tmp, source.model.config, tokenizer, result, base, save_dtype or dtype, tensor_bytes, None, factor_dtype
        )
    world.barrier()
    return result
