"""Write a compressed model as a checkpoint folder, atomically (a temporary folder renamed into place)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model
from torch import nn

from ngc import __version__
from ngc.atomic import atomic_folder, write_json_atomic
from ngc.checkpoint.manifest import FORMAT_VERSION, MANIFEST, WEIGHTS, group_records
from ngc.errors import UsageError
from ngc.topology.groups import Group


def check_target(out: Path, force: bool) -> None:
    """Refuse to overwrite an existing folder unless ``force``; refuse a file."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file", hint="give a folder name for the checkpoint")
    if out.exists() and any(out.iterdir()) and not force:
        raise UsageError(f"--out {out} already exists", hint="choose another folder, or pass --force to replace it")


def save_checkpoint(
    model: nn.Module,
    tokenizer: Any,
    out: Path,
    *,
    groups: list[Group],
    ranks: dict[str, int],
    record: dict[str, Any],
    force: bool = False,
) -> Path:
    """Save config, tokenizer, weights (each shared basis once) and ``ngc.json``; return ``out``."""
    check_target(out, force)
    with atomic_folder(out) as tmp:
        model.config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_model(model, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / WEIGHTS).chmod(0o644)
        manifest = {
            "format_version": FORMAT_VERSION,
            "ngc_version": __version__,
            "torch_version": torch.__version__,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "groups": group_records(groups, ranks),
            **record,
        }
        write_json_atomic(tmp / MANIFEST, manifest)
    return out
