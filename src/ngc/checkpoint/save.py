"""Write a compressed model as a checkpoint folder, atomically (a temporary folder renamed into place)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ngc.atomic import atomic_folder, check_output_folder, write_json_atomic
from ngc.checkpoint.manifest import FORMAT_VERSION, MANIFEST, WEIGHTS, group_records, library_versions
from ngc.checkpoint.tensors import save_weights

if TYPE_CHECKING:
    from ngc.api import CompressionResult


def check_target(out: Path, force: bool, *, inputs: Sequence[Path] = (), flag: str = "--out") -> None:
    """Refuse a checkpoint target that cannot or must not be replaced; check that it can be written.

    ``out`` may be new or empty, or with ``force`` an ngc checkpoint (a folder holding ``ngc.json``); never a
    file, the current directory or an ancestor of it, nor one of ``inputs`` (or a folder holding one).
    """
    check_output_folder(out, force, marker=MANIFEST, inputs=inputs, flag=flag)


def save_checkpoint(
    model: nn.Module,
    tokenizer: Any,
    out: str | Path,
    result: CompressionResult,
    base_model: dict[str, Any],
    *,
    dtype: torch.dtype | None = None,
    force: bool = False,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save config, tokenizer, weights (each shared tensor once; cast to ``dtype`` if given) and ``ngc.json``.

    ``result`` is what :func:`ngc.compress` returned for ``model``; ``base_model`` is
    :func:`ngc.checkpoint.manifest.base_identity` of the dense model, taken before compressing.
    Nothing appears under ``out`` unless everything was written.
    """
    out = Path(out)
    check_target(out, force)
    stored_dtype = dtype or next(model.parameters()).dtype
    with atomic_folder(out, replace=force) as tmp:
        config = model.config
        saved_dtype = getattr(config, "dtype", None)
        config.dtype = stored_dtype
        try:
            config.save_pretrained(tmp)
        finally:
            config.dtype = saved_dtype
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        tensor_bytes = save_weights(model, tmp / WEIGHTS, dtype)
        manifest = {
            "format_version": FORMAT_VERSION,
            "versions": library_versions(),
            "dtype": str(stored_dtype).removeprefix("torch."),
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
        write_json_atomic(tmp / MANIFEST, manifest)
    return out
