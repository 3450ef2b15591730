"""The ``ngc.json`` manifest: what rebuilds the compressed structure before the weights are loaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ngc.errors import NgcError
from ngc.topology.blocks import Member
from ngc.topology.groups import Group

MANIFEST = "ngc.json"
WEIGHTS = "model.safetensors"
FORMAT_VERSION = 1


class CheckpointError(NgcError):
    """A folder that is not a usable ngc checkpoint."""


def is_checkpoint(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def group_records(groups: list[Group], ranks: dict[str, int]) -> list[dict[str, Any]]:
    return [
        {
            "id": group.id,
            "rank": ranks[group.id],
            "members": [
                {"module": m.module, "role": m.role, "layer": m.layer, "m": m.m, "n": m.n, "input_key": m.input_key}
                for m in group.members
            ],
        }
        for group in groups
    ]


def groups_from_records(records: list[dict[str, Any]]) -> tuple[list[Group], dict[str, int]]:
    groups = [Group(tuple(Member(**member) for member in record["members"])) for record in records]
    ranks = {group.id: int(record["rank"]) for group, record in zip(groups, records, strict=True)}
    return groups, ranks


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{path} cannot be read as JSON: {exc}", hint="the checkpoint is damaged; compress again"
        ) from exc
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if not isinstance(version, int):
        raise CheckpointError(f"{path} has no format_version", hint="this is not a manifest written by ngc")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {version}; this ngc reads up to {FORMAT_VERSION}",
            hint="upgrade ngc (pip install -U ngc)",
        )
    return manifest
