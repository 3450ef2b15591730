"""Rewrite a checkpoint of format 1 into the current format, in place and atomically.

Format 1 (before sharding) is one ``model.safetensors`` without the guard tensor, a ``config.json`` that does not
name ngc, and ``ngc.json`` with ``format_version`` 1. ``ngc.load`` reads it, but transformers' ``from_pretrained``
sees a plain dense model there and fills the compressed modules' weights at random. :func:`upgrade` writes what a
current checkpoint has (see :mod:`ngc.checkpoint.save`): the weights through :class:`ShardWriter` with the guard
tensor (one file, or shards with an index above the shard size), ``quantization_config`` in ``config.json``, and
``format_version`` 2 in ``ngc.json`` (with a record of the upgrade). Every other file is copied unchanged.

The weights are checked against the structure first (file headers only, on the meta device), and the new folder is
written beside the old one and renamed into its place (:func:`ngc.atomic.atomic_folder`), so an interrupted or
failed upgrade leaves the checkpoint as it was. It needs disk room for a second copy of the weights while it runs.
"""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ngc.checkpoint.manifest import FORMAT_VERSION, MANIFEST, CheckpointError, library_versions, read_manifest
from ngc.checkpoint.shards import DEFAULT_MAX_SHARD_BYTES, INDEX_FILE, SINGLE_FILE
from ngc.checkpoint.structure import CONFIG, checkpoint_records
from ngc.errors import UsageError

#: the format :func:`upgrade` rewrites
UPGRADABLE = 1


class NotACheckpointError(UsageError, CheckpointError):
    """A path given as a checkpoint that is not an ngc checkpoint folder at all (a usage error: exit code 2)."""


@dataclass(frozen=True)
class UpgradeResult:
    folder: Path
    from_version: int
    to_version: int

    @property
    def changed(self) -> bool:
        return self.from_version != self.to_version


def checkpoint_format(folder: str | Path) -> int:
    """The format version of an ngc checkpoint folder (``ngc.json``, else ``config.json``'s quantization_config).

    A path that is no folder, or a folder that is no ngc checkpoint, is a :class:`NotACheckpointError`; a folder
    whose two records disagree, or that is format 2 in ``ngc.json`` without an ngc ``config.json``, a
    :class:`CheckpointError`.
    """
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise NotACheckpointError(f"{folder}: no such folder", hint="give the folder that `ngc compress --out` wrote")
    if not folder.is_dir():
        raise NotACheckpointError(f"{folder} is a file, not a checkpoint folder", hint="give the checkpoint's folder")
    record, has_manifest = checkpoint_records(folder, NotACheckpointError)
    recorded = record.get("format_version") if record is not None else None
    if recorded is not None and (not isinstance(recorded, int) or recorded > FORMAT_VERSION):
        raise CheckpointError(
            f"{folder / CONFIG}: quantization_config has format_version {recorded!r}; this ngc reads up to "
            f"{FORMAT_VERSION}",
            hint="upgrade ngc (pip install -U ngc)",
        )
    version = read_manifest(folder)["format_version"] if has_manifest else recorded
    if version is None:
        raise CheckpointError(f"{folder / CONFIG}: quantization_config has no format_version", hint="compress again")
    if record is None and version != UPGRADABLE:
        raise CheckpointError(
            f"{folder / MANIFEST} records format {version}, but {folder / CONFIG} names no ngc quantization_config",
            hint="config.json was replaced or edited; restore the one written with the checkpoint, or compress again",
        )
    if record is not None and version != recorded:
        raise CheckpointError(
            f"{folder / MANIFEST} records format {version}, the quantization_config in {folder / CONFIG} {recorded}",
            hint="the two files come from different runs; keep the files written together, or compress again",
        )
    return version


def upgrade(path: str | Path, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> UpgradeResult:
    """Rewrite the checkpoint at ``path`` from format 1 into the current format, in place (see the module doc).

    A checkpoint already in the current format is left untouched (``result.changed`` is False). After an upgrade,
    ``AutoModelForCausalLM.from_pretrained(path)`` (with ngc imported) and ``ngc.load(path)`` give the same model.
    Weights above ``max_shard_bytes`` are written as shards, as :func:`ngc.save` writes them.
    """
    folder = Path(path).expanduser()
    version = checkpoint_format(folder)
    if version == FORMAT_VERSION:
        return UpgradeResult(folder, version, version)
    from ngc.atomic import atomic_folder, check_output_folder, output_lock

    target = folder.resolve()  # a symbolic link keeps pointing at the upgraded folder
    check_output_folder(target, True, marker=MANIFEST, flag="CHECKPOINT")
    with output_lock(target):  # read and rewritten under the lock: a concurrent upgrade or save stops at once
        version = checkpoint_format(target)
        if version == FORMAT_VERSION:  # upgraded by another run meanwhile
            return UpgradeResult(folder, version, version)
        model, structure, manifest = _checked_skeleton(target)
        with atomic_folder(target, replace=True) as tmp:
            _copy_other_files(target, tmp)
            tensor_bytes = _write_weights(target, tmp, model, structure.groups, max_shard_bytes)
            _write_records(target, tmp, structure, manifest, tensor_bytes)
    return UpgradeResult(folder, version, FORMAT_VERSION)


def _checked_skeleton(folder: Path) -> tuple[Any, Any, dict[str, Any]]:
    """The compressed structure on the meta device, its weights' headers checked against it (nothing is read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ngc.arch import arch_spec
    from ngc.checkpoint.manifest import check_manifest
    from ngc.checkpoint.structure import build_structure, read_structure
    from ngc.checkpoint.tensors import check_stored, read_stored

    structure = read_structure(folder)
    assert structure.manifest is not None  # format 1 always has ngc.json
    config = AutoConfig.from_pretrained(folder)
    check_manifest(structure.manifest, Path(structure.source), config)
    arch_spec(config)
    stored = read_stored(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    build_structure(model, structure)
    check_stored(model, stored, structure.source)
    return model, structure, structure.manifest


def _is_weight_file(name: str) -> bool:
    return name in (SINGLE_FILE, INDEX_FILE) or (name.startswith("model-") and name.endswith(".safetensors"))


def _copy_other_files(folder: Path, tmp: Path) -> None:
    """Everything but the weights and the two records, as it is (tokenizer, generation config, notes)."""
    for entry in sorted(folder.iterdir()):
        if entry.name in (CONFIG, MANIFEST) or _is_weight_file(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, tmp / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, tmp / entry.name, follow_symlinks=False)


def _write_weights(folder: Path, tmp: Path, model: Any, groups: list[Any], max_shard_bytes: int) -> int:
    """The stored tensors again, as :func:`ngc.checkpoint.save.save_checkpoint` writes them: the guard first, then
    every tensor in the model's order, one at a time (memory holds about one shard), and the aliases."""
    from safetensors import SafetensorError, safe_open

    from ngc.checkpoint.save import add_guard
    from ngc.checkpoint.shards import ShardWriter, canonical_tensors
    from ngc.checkpoint.tensors import DAMAGED, read_stored

    stored = read_stored(folder)
    names, aliases = canonical_tensors(model)
    writer = ShardWriter(tmp, max_shard_bytes=max_shard_bytes)  # no dtype: every tensor keeps the stored one
    add_guard(writer, groups)
    try:
        with ExitStack() as stack:
            handles = {
                path: stack.enter_context(safe_open(str(path), "pt")) for path in sorted(set(stored.files.values()))
            }
            for name in names:
                writer.add({name: handles[stored.files[name]].get_tensor(name)})
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"the weights of {folder} cannot be read: {exc}", hint=DAMAGED) from exc
    writer.add({}, aliases)
    return writer.finish()


def _write_records(folder: Path, tmp: Path, structure: Any, manifest: dict[str, Any], tensor_bytes: int) -> None:
    """``config.json`` with the quantization_config (as a save writes it) and ``ngc.json`` at the current format."""
    from transformers import AutoConfig

    from ngc.atomic import write_json_atomic
    from ngc.checkpoint.load import stored_dtype
    from ngc.checkpoint.save import write_config
    from ngc.models.load import parse_dtype

    config = AutoConfig.from_pretrained(folder)
    write_config(tmp, config, structure.groups, structure.ranks, parse_dtype(stored_dtype(structure, config)))
    upgraded = dict(manifest, format_version=FORMAT_VERSION, tensor_bytes=tensor_bytes)
    upgraded["upgrade"] = {"from_format_version": manifest["format_version"], "versions": library_versions()}
    write_json_atomic(tmp / MANIFEST, upgraded)
