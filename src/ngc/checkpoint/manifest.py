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


def base_identity(model: Any, name: str) -> dict[str, Any]:
    """What a checkpoint records of the dense model it was made from: name, weight hash, config signature."""
    return {"name": name, "weights_sha256": weights_sha256(model), "signature": config_signature(model.config)}


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


REQUIRED_KEYS = ("format_version", "groups", "config", "base_model")
SIGNATURE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")


def config_signature(config: Any) -> dict[str, Any]:
    """The facts of a config that a compressed structure depends on (of its text part, for composite models)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    signature = {"model_type": getattr(config, "model_type", None)}
    for name in SIGNATURE_FIELDS[1:]:
        signature[name] = getattr(text, name, None)  # configs map their own field names onto these
    return signature


def weights_sha256(model: Any) -> str:
    """SHA-256 over every tensor of the state dict (names, shapes, dtypes and bytes), in name order."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("ngc", "torch", "transformers", "safetensors"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "unknown"
    return versions


def check_manifest(manifest: dict[str, Any], path: Path, config: Any) -> None:
    """Required keys present, and the folder's config.json describes the model the checkpoint was made from."""
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}", hint="the manifest is damaged; compress again")
    recorded = manifest["base_model"].get("signature")
    if recorded is not None:
        actual = config_signature(config)
        differ = {k: (recorded.get(k), actual.get(k)) for k in SIGNATURE_FIELDS if recorded.get(k) != actual.get(k)}
        if differ:
            detail = ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in differ.items())
            raise CheckpointError(
                f"{path} was made from a different base model than {path.parent / 'config.json'} describes ({detail})",
                hint=f"keep the config.json written with the checkpoint (base: {manifest['base_model'].get('name')})",
            )
