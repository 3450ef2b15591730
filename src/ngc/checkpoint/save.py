"""Write a compressed model as a checkpoint folder, atomically (a temporary folder renamed into place).

The folder: ``config.json`` (the base model's, with ``quantization_config`` naming ngc and its groups), the
tokenizer, the weights through :class:`ngc.checkpoint.shards.ShardWriter` (one file or shards with an index; each
shared tensor once; a zero-size guard tensor, see :func:`ngc.checkpoint.manifest.guard_name`) and ``ngc.json``.
A model with int8 factors (:func:`ngc.modules.int8.quantize_factors`) stores their int8 values and per-row scales
as plain tensors and records ``factor_dtype: "int8"`` in ``ngc.json`` and in the ``quantization_config``.
The layer-streamed pipeline writes the same folder with the same functions: :func:`add_guard`, the writer, then
:func:`write_checkpoint_files`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ngc.atomic import atomic_folder, check_output_folder, write_json_atomic
from ngc.checkpoint.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    config_signature,
    factor_dtype_record,
    group_records,
    guard_name,
    library_versions,
    quantization_config,
)
from ngc.checkpoint.shards import DEFAULT_MAX_SHARD_BYTES, ShardWriter, canonical_tensors
from ngc.errors import UsageError
from ngc.topology.groups import Group

if TYPE_CHECKING:
    from ngc.api import CompressionResult


def check_target(out: Path, force: bool, *, inputs: Sequence[Path] = (), flag: str = "--out") -> None:
    """Refuse a checkpoint target that cannot or must not be replaced; check that it can be written.

    ``out`` may be new or empty, or with ``force`` an ngc checkpoint (a folder holding ``ngc.json``); never a
    file, the current directory or an ancestor of it, nor one of ``inputs`` (or a folder holding one).
    """
    check_output_folder(out, force, marker=MANIFEST, inputs=inputs, flag=flag)


def add_guard(writer: ShardWriter, groups: Sequence[Group]) -> None:
    """Store the zero-size guard tensor that stops a transformers without ngc (see ``guard_name``)."""
    writer.add({guard_name(list(groups)): torch.zeros(0)})


def write_model_tensors(writer: ShardWriter, model: nn.Module) -> None:
    """Every tensor of ``model`` once, its other names as aliases."""
    tensors, aliases = canonical_tensors(model)
    writer.add(tensors, aliases)


def write_config(
    folder: Path,
    config: Any,
    groups: Sequence[Group],
    ranks: dict[str, int],
    dtype: torch.dtype,
    factor_dtype: str = "float",
) -> None:
    """``config.json`` of the base model with the stored dtype and ``quantization_config`` naming ngc."""
    saved = {name: getattr(config, name, None) for name in ("dtype", "quantization_config")}
    config.dtype = dtype
    config.quantization_config = quantization_config(list(groups), ranks, guard_name(list(groups)), factor_dtype)
    try:
        config.save_pretrained(folder)
    finally:
        for name, value in saved.items():
            if value is None and name == "quantization_config":
                del config.quantization_config
            else:
                setattr(config, name, value)


def manifest_payload(
    result: CompressionResult,
    base_model: dict[str, Any],
    dtype: torch.dtype,
    tensor_bytes: int,
    extra: dict[str, Any] | None = None,
    factor_dtype: str = "float",
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "versions": library_versions(),
        "dtype": str(dtype).removeprefix("torch."),
        **factor_dtype_record(factor_dtype),
        "tensor_bytes": tensor_bytes,
        "config": result.config.to_dict(),
        "base_model": base_model,
        "calibration": result.calibration,
        "accounting": result.accounting.to_dict(),
        "fit": {
            "calibration_seconds": result.calibration_seconds,
            "fit_seconds": result.fit_seconds,
            "warnings": result.warnings,
        },
        "groups": group_records(list(result.topology), result.ranks),
        **(extra or {}),
    }


def write_checkpoint_files(
    folder: Path,
    config: Any,
    tokenizer: Any,
    result: CompressionResult,
    base_model: dict[str, Any],
    dtype: torch.dtype,
    tensor_bytes: int,
    extra: dict[str, Any] | None = None,
    factor_dtype: str = "float",
) -> None:
    """Everything but the weights: config.json, the tokenizer (if any) and ngc.json, into ``folder``."""
    write_config(folder, config, result.topology, result.ranks, dtype, factor_dtype)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    payload = manifest_payload(result, base_model, dtype, tensor_bytes, extra, factor_dtype)
    write_json_atomic(folder / MANIFEST, payload)


def save_checkpoint(
    model: nn.Module,
    tokenizer: Any,
    out: str | Path,
    result: CompressionResult,
    base_model: dict[str, Any] | None = None,
    *,
    dtype: torch.dtype | None = None,
    force: bool = False,
    extra: dict[str, Any] | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Save config, tokenizer, weights (each shared tensor once; cast to ``dtype`` if given) and ``ngc.json``.

    ``result`` is what :func:`ngc.compress` returned for ``model``; ``base_model`` is
    :func:`ngc.checkpoint.manifest.base_identity` of the dense model, taken before compressing (default: what
    ``result`` records, completed from ``model.config``). Nothing appears under ``out`` unless everything was
    written. int8 factors are stored as they are (their scales cast to ``dtype`` like every float tensor).
    """
    from ngc.modules.int8 import factor_dtype_of

    out = Path(out)
    check_target(out, force)
    if not result.topology:
        raise UsageError("the compression result has no groups", hint="save a model that ngc.compress returned")
    stored_dtype = dtype or next(p for p in model.parameters() if p.is_floating_point()).dtype
    factor_dtype = factor_dtype_of(model)
    base = base_model if base_model is not None else base_record(model, result)
    with atomic_folder(out, replace=force) as tmp:
        writer = ShardWriter(tmp, max_shard_bytes=max_shard_bytes, dtype=dtype)
        add_guard(writer, result.topology)
        write_model_tensors(writer, model)
        tensor_bytes = writer.finish()
        write_checkpoint_files(
            tmp, model.config, tokenizer, result, base, stored_dtype, tensor_bytes, extra, factor_dtype
        )
    return out


def base_record(model: nn.Module, result: CompressionResult) -> dict[str, Any]:
    """What the checkpoint records of the dense model: ``result.base_model`` plus name and config signature."""
    recorded = dict(result.base_model or {})
    config = getattr(model, "config", None)
    recorded.setdefault("name", getattr(config, "_name_or_path", None) or None)
    if config is not None:
        recorded.setdefault("signature", config_signature(config))
    return recorded


def save(
    model: nn.Module,
    folder: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    force: bool = False,
    tokenizer: Any = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Save a model that :func:`ngc.compress` returned (its record travels as ``model.ngc_compression``).

    ``dtype``: cast floating tensors (``torch.bfloat16`` or ``"bfloat16"``); ``force``: replace an existing ngc
    checkpoint; ``tokenizer``: saved beside the weights (lm-eval and pipelines need one).
    """
    result = getattr(model, "ngc_compression", None)
    if result is None:
        raise UsageError(
            "this model carries no compression record (model.ngc_compression)",
            hint="save the model that ngc.compress(model, ...) compressed, in the same process; a loaded "
            "checkpoint is already saved (copy its folder, or use model.save_pretrained)",
        )
    if isinstance(dtype, str):
        from ngc.models.load import parse_dtype

        dtype = parse_dtype(dtype)
    return save_checkpoint(model, tokenizer, folder, result, dtype=dtype, force=force, max_shard_bytes=max_shard_bytes)
