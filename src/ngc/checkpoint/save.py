"""Write a compressed model as a checkpoint folder, atomically (a temporary folder renamed into place)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ngc.atomic import atomic_folder, write_json_atomic
from ngc.checkpoint.manifest import FORMAT_VERSION, MANIFEST, WEIGHTS, group_records, library_versions
from ngc.checkpoint.tensors import save_weights
from ngc.errors import UsageError

if TYPE_CHECKING:
    from ngc.api import CompressionResult


def check_target(out: Path, force: bool) -> None:
    """Refuse to overwrite an existing folder unless ``force``; refuse a file."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file", hint="give a folder name for the checkpoint")
    if out.exists() and any(out.iterdir()) and not force:
        raise UsageError(f"--out {out} already exists", hint="choose another folder, or pass --force to replace it")


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
    with atomic_folder(out) as tmp:
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
