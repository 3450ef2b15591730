"""What a checkpoint folder says about its structure, and building that structure on the meta device.

Two records describe the groups: ``ngc.json`` (written by ngc) and ``config.json``'s ``quantization_config``
(format 2; also what ``save_pretrained`` of a loaded model writes). Where both exist they must agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ngc.checkpoint.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    QUANT_METHOD,
    CheckpointError,
    groups_from_records,
    read_factor_dtype,
    read_manifest,
)
from ngc.topology.groups import Group

CONFIG = "config.json"


@dataclass(frozen=True)
class Structure:
    """Groups and ranks of a checkpoint, where they were read, and the guard tensor name (format 2)."""

    groups: list[Group]
    ranks: dict[str, int]
    source: str  # for messages: the file the records came from
    guard: str | None
    manifest: dict[str, Any] | None
    factor_dtype: str = "float"  # "int8": every factor is int8 with per-row scales (ngc.modules.int8)


def ngc_quantization_config(config: Any) -> dict[str, Any] | None:
    """The ``quantization_config`` of a config (object or dict) if it names ngc, else None."""
    value = (
        config.get("quantization_config") if isinstance(config, dict) else getattr(config, "quantization_config", None)
    )
    if value is not None and not isinstance(value, dict):
        value = value.to_dict()
    if isinstance(value, dict) and value.get("quant_method") == QUANT_METHOD:
        return value
    return None


def read_config_json(folder: Path) -> dict[str, Any] | None:
    path = folder / CONFIG
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} cannot be read as JSON: {exc}", hint="the checkpoint is damaged") from exc
    return payload if isinstance(payload, dict) else None


def structure_from_quantization_config(record: dict[str, Any], source: str) -> Structure:
    version = record.get("format_version")

    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: quantization_config has format_version {version!r}; this ngc reads up to {FORMAT_VERSION}",
            hint="upgrade ngc (pip install -U ngc)",
        )
    groups, ranks = groups_from_records(record.get("groups"), f"{source} (quantization_config)")
    guard = record.get("guard")
    factor_dtype = read_factor_dtype(record, f"{source} (quantization_config)")
    return Structure(groups, ranks, source, guard if isinstance(guard, str) else None, None, factor_dtype)


def checkpoint_records(
    folder: Path, error: type[CheckpointError] = CheckpointError, hint: str = ""
) -> tuple[dict[str, Any] | None, bool]:
    """``(config.json's ngc quantization_config or None, whether ngc.json exists)``; ``error`` when neither is there."""
    config = read_config_json(folder)
    record = ngc_quantization_config(config) if config is not None else None
    has_manifest = (folder / MANIFEST).is_file()
    if not has_manifest and record is None:
        raise error(
            f"{folder} is not an ngc checkpoint (no {MANIFEST}, and config.json names no ngc quantization_config)",
            hint=hint or "give the folder that `ngc compress --out` (or ngc.save) wrote",
        )
    return record, has_manifest


def read_structure(folder: Path) -> Structure:
    """The structure recorded in ``folder``: from ``ngc.json`` and/or ``config.json``, which must agree."""
    record, has_manifest = checkpoint_records(
        folder,
        hint="give the folder that `ngc compress --out` (or ngc.save) wrote; plain model folders load with "
        "ngc.load_model",
    )
    from_config = structure_from_quantization_config(record, str(folder / CONFIG)) if record is not None else None
    if not has_manifest:
        assert from_config is not None
        return from_config
    manifest = read_manifest(folder)
    if "groups" not in manifest:
        raise CheckpointError(f"{folder / MANIFEST} lacks groups", hint="the manifest is damaged; compress again")
    groups, ranks = groups_from_records(manifest["groups"], folder / MANIFEST)
    if from_config is not None and (from_config.groups, from_config.ranks) != (groups, ranks):
        raise CheckpointError(
            f"{folder / MANIFEST} and the quantization_config in {folder / CONFIG} describe different groups",
            hint="the two files come from different runs; keep the files written together, or compress again",
        )
    factor_dtype = read_factor_dtype(manifest, folder / MANIFEST)
    if from_config is not None and from_config.factor_dtype != factor_dtype:
        raise CheckpointError(
            f"{folder / MANIFEST} records {factor_dtype} factors, the quantization_config in {folder / CONFIG} "
            f"{from_config.factor_dtype} ones",
            hint="the two files come from different runs; keep the files written together, or compress again",
        )
    guard = from_config.guard if from_config is not None else None
    return Structure(groups, ranks, str(folder / MANIFEST), guard, manifest, factor_dtype)


def check_widths(model: nn.Module, structure: Structure) -> None:
    """The dense modules that config.json builds have the widths the group records name."""
    from ngc.arch import arch_spec

    conv1d = arch_spec(model).conv1d
    rows: dict[str, tuple[int, int]] = {}
    for group in structure.groups:
        for member in group.members:
            m, n = rows.get(member.module, (0, member.n))
            rows[member.module] = (m + member.m, n)
    for name, (m, n) in rows.items():
        try:
            weight = model.get_submodule(name).weight
        except AttributeError as exc:
            raise CheckpointError(
                f"the model that config.json describes has no module {name}, which {structure.source} compresses",
                hint="keep the config.json written with the checkpoint",
            ) from exc
        n_in, m_out = (weight.shape[0], weight.shape[1]) if conv1d else (weight.shape[1], weight.shape[0])
        if (m_out, n_in) != (m, n):
            raise CheckpointError(
                f"config.json gives {name} the shape {m_out} x {n_in}, the group records in {structure.source} "
                f"{m} x {n}",
                hint="config.json does not describe these weights; keep the config.json written with the checkpoint",
            )


def build_structure(model: nn.Module, structure: Structure) -> None:
    """Swap the model's dense modules (on meta) for the factorised ones the records describe.

    The parameters follow the model's (meta) device; the output-order buffers of fused modules (GPT-NeoX's q|k|v)
    hold values, computed on the CPU, so that they need no loading. int8 factors (``structure.factor_dtype``) need
    torchao, checked before anything is built.
    """
    from ngc.modules.factorized import FactorizedLinear
    from ngc.modules.swap import factorize
    from ngc.topology.blocks import output_order

    check_widths(model, structure)
    if structure.factor_dtype == "int8":
        from ngc.modules.int8 import require_torchao

        require_torchao()
    try:
        with torch.device("cpu"):  # the caller may build inside a meta-device context
            fused = {m.module for g in structure.groups for m in g.members}
            orders = {name: output_order(model, name) for name in sorted(fused)}
            factorize(model, structure.groups, structure.ranks)
            for name, order in orders.items():
                module = model.get_submodule(name)
                if isinstance(module, FactorizedLinear) and module.output_index is not None and order is not None:
                    inverse = torch.empty(len(order), dtype=torch.long)
                    inverse[torch.as_tensor(order)] = torch.arange(len(order))
                    module.output_index = inverse
            if structure.factor_dtype == "int8":
                from ngc.modules.int8 import quantize_factors

                quantize_factors(model, empty=True)
    except (KeyError, AttributeError, ValueError, IndexError, StopIteration) as exc:
        raise CheckpointError(
            f"the groups in {structure.source} do not fit the model that config.json describes: {exc!r}",
            hint="the records and config.json come from different models; keep the files written together",
        ) from exc
