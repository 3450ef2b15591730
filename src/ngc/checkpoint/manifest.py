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
FORMAT_VERSION = 2  # 2: sharded weights, config.json names ngc in quantization_config; 1: one model.safetensors
QUANT_METHOD = "ngc"
MEMBER_FIELDS: dict[str, type] = {"module": str, "role": str, "layer": int, "m": int, "n": int, "input_key": str}
#: how the factors are stored: "float" (the checkpoint's dtype; not recorded) or "int8" (recorded as
#: ``factor_dtype`` in ngc.json and in the quantization_config: int8 values with one scale per output row)
FACTOR_DTYPES = ("float", "int8")


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


def groups_from_records(records: Any, source: Path | str = MANIFEST) -> tuple[list[Group], dict[str, int]]:
    """The groups and ranks that ``group_records`` wrote; any damage is a :class:`CheckpointError` naming it."""
    if not isinstance(records, list) or not records:
        raise _damaged(source, "its groups are not a non-empty list")
    groups, ranks = [], {}
    for index, record in enumerate(records):
        where = f"group {index}"
        if not isinstance(record, dict) or not isinstance(record.get("members"), list) or not record["members"]:
            raise _damaged(source, f"{where} has no list of members")
        rank = record.get("rank")
        if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
            raise _damaged(source, f"{where} has rank {rank!r}, not a positive integer")
        members = [_member(member, source, f"{where}, member {j}") for j, member in enumerate(record["members"])]
        try:
            group = Group(tuple(members))
        except (ValueError, TypeError) as exc:
            raise _damaged(source, f"{where}: {exc}") from exc
        if group.id in ranks:
            raise _damaged(source, f"{where} repeats group {group.id}")
        if rank > group.n:
            raise _damaged(source, f"{where} has rank {rank} above its input width {group.n}")
        groups.append(group)
        ranks[group.id] = rank
    seen: set[tuple[str, str]] = set()
    for group in groups:
        for member in group.members:
            if (member.module, member.role) in seen:
                raise _damaged(source, f"{member.module} ({member.role}) is in two groups")
            seen.add((member.module, member.role))
    return groups, ranks


def _member(record: Any, source: Path | str, where: str) -> Member:
    if not isinstance(record, dict):
        raise _damaged(source, f"{where} is not an object")
    fields = {}
    for name, kind in MEMBER_FIELDS.items():
        value = record.get(name)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            raise _damaged(source, f"{where} has {name} {value!r}, not a {kind.__name__}")
        fields[name] = value
    if fields["m"] <= 0 or fields["n"] <= 0 or not fields["module"]:
        raise _damaged(source, f"{where} has an empty module name or width")
    return Member(**fields)


def _damaged(source: Path | str, problem: str) -> CheckpointError:
    return CheckpointError(
        f"the group records in {source} are damaged: {problem}",
        hint="the checkpoint was edited or truncated; compress again (or restore ngc.json from the original run)",
    )


def quantization_config(
    groups: list[Group], ranks: dict[str, int], guard: str, factor_dtype: str = "float"
) -> dict[str, Any]:
    """What ``config.json`` carries under ``quantization_config``: enough for transformers to rebuild the structure."""
    return {
        "quant_method": QUANT_METHOD,
        "format_version": FORMAT_VERSION,
        "manifest": MANIFEST,
        "guard": guard,
        "groups": group_records(groups, ranks),
        **factor_dtype_record(factor_dtype),
    }


def factor_dtype_record(factor_dtype: str) -> dict[str, str]:
    """``{"factor_dtype": "int8"}`` for int8 factors; nothing for float ones (the format before int8 existed)."""
    return {} if factor_dtype == "float" else {"factor_dtype": factor_dtype}


def read_factor_dtype(record: dict[str, Any], source: Path | str) -> str:
    """The factor dtype a manifest or quantization_config records (``"float"`` when it records none)."""
    value = record.get("factor_dtype", "float")
    if value not in FACTOR_DTYPES:
        raise CheckpointError(
            f"{source} stores its factors as {value!r}; this ngc reads {', '.join(FACTOR_DTYPES)}",
            hint="upgrade ngc (pip install -U ngc)",
        )
    return value


def guard_name(groups: list[Group]) -> str:
    """The dense weight name of the first factorised module: each checkpoint stores a zero-size tensor under it.

    A transformers without ngc registered only warns about the unknown ``quant_method`` and goes on to build the
    dense model; this tensor then stops it with a size-mismatch error instead of handing out random weights.
    """
    return f"{groups[0].members[0].module}.weight"


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
