"""Reading a checkpoint's weights: which tensors are stored where, checked against the rebuilt structure, then
loaded file by file into a model whose parameters are still on the meta device.

The folder holds ``model.safetensors`` or ``model-0000i-of-0000N.safetensors`` with ``model.safetensors.index.json``
(see :mod:`ngc.checkpoint.shards`). Every check runs on the file headers before any tensor is read: each file the
index names exists and holds what the index says, every tensor of the structure is stored once with its shape, no
tensor is left over (but the guard, see :func:`ngc.checkpoint.manifest.guard_name`), and the aliases recorded
match the sharing of the rebuilt structure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ngc.checkpoint.manifest import CheckpointError
from ngc.checkpoint.shards import ALIASES_KEY, INDEX_FILE, SINGLE_FILE, canonical_tensors

DAMAGED = "the checkpoint is incomplete or damaged; copy it again, or compress again"
OTHER_RUN = "the weights and the structure come from different runs, or a file was edited; compress again"


@dataclass(frozen=True)
class StoredTensors:
    """What a folder's weight files hold: each name's file and shape, and the recorded aliases."""

    files: dict[str, Path]  # tensor name -> file
    shapes: dict[str, tuple[int, ...]]
    aliases: dict[str, str] | None  # None when the files record none (a folder not written by ngc)

    def names_in(self, path: Path) -> list[str]:
        return [name for name, file in self.files.items() if file == path]


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of ``folder`` in index order, or a :class:`CheckpointError` naming what is missing."""
    index = folder / INDEX_FILE
    single = folder / SINGLE_FILE
    if index.is_file():
        return sorted(set(_read_index(index)[0].values()))
    if single.is_file():
        return [single]
    raise CheckpointError(f"{folder} holds neither {SINGLE_FILE} nor {INDEX_FILE}", hint=DAMAGED)


def _read_index(index: Path) -> tuple[dict[str, Path], dict[str, str]]:
    try:
        payload = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{index} cannot be read as JSON: {exc}", hint=DAMAGED) from exc
    weight_map = payload.get("weight_map") if isinstance(payload, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index} has no weight_map of tensor names to files", hint=DAMAGED)
    files: dict[str, Path] = {}
    for name, file in weight_map.items():
        path = index.parent / file
        if Path(file).name != file or not file.endswith(".safetensors"):
            raise CheckpointError(f"{index} names {file!r}, not a .safetensors file in this folder", hint=DAMAGED)
        files[name] = path
    missing = sorted({path.name for path in files.values() if not path.is_file()})
    if missing:
        raise CheckpointError(
            f"{index} names {len(missing)} file(s) that are not in {index.parent}: {', '.join(missing[:3])}",
            hint=DAMAGED,
        )
    metadata = payload.get("metadata") or {}
    return files, metadata if isinstance(metadata, dict) else {}


def _parse_aliases(text: object, source: Path) -> dict[str, str]:
    try:
        aliases = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError:
        aliases = None
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise CheckpointError(f"{source}: the {ALIASES_KEY} record is not a JSON object of names", hint=DAMAGED)
    return aliases


def read_stored(folder: Path) -> StoredTensors:
    """Names, shapes and files of every stored tensor, from the headers only."""
    index = folder / INDEX_FILE
    if index.is_file():
        listed, metadata = _read_index(index)
        paths = sorted(set(listed.values()))
        aliases = _parse_aliases(metadata[ALIASES_KEY], index) if ALIASES_KEY in metadata else None
    else:
        listed, paths, aliases = {}, weight_files(folder), None
    files: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for path in paths:
        header_aliases, names = _read_header(path, shapes)
        if aliases is None and header_aliases is not None:
            aliases = header_aliases
        for name in names:
            if name in files:
                raise CheckpointError(f"{name} is stored twice ({files[name].name} and {path.name})", hint=DAMAGED)
            files[name] = path
    if listed and listed != files:
        wrong = sorted(set(listed.items()) ^ set(files.items()))[0][0]
        raise CheckpointError(f"{index} does not list what its files hold (e.g. {wrong})", hint=DAMAGED)
    return StoredTensors(files, shapes, aliases)


def _read_header(path: Path, shapes: dict[str, tuple[int, ...]]) -> tuple[dict[str, str] | None, list[str]]:
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
            names = list(handle.keys())
            for name in names:
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} cannot be read: {exc}", hint=DAMAGED) from exc
    aliases = _parse_aliases(metadata[ALIASES_KEY], path) if ALIASES_KEY in metadata else None
    return aliases, names


def check_stored(
    model: nn.Module,
    stored: StoredTensors,
    source: str,
    ignore: frozenset[str] = frozenset(),
    tied: Mapping[str, str] | None = None,
) -> None:
    """Every tensor of ``model`` (rebuilt on meta) stored once with its shape, nothing else (but ``ignore``), and
    the recorded aliases equal to the model's sharing; ``tied`` (``{target: source}``) names ties that the model
    will make later (transformers ties embeddings after loading)."""
    expected, expected_aliases = canonical_tensors(model)
    for target, origin in (tied or {}).items():
        if target in expected and origin != target:
            expected.pop(target)
            expected_aliases[target] = expected_aliases.get(origin, origin)
    names = set(stored.files) - ignore
    missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
    if missing or extra:
        problems = [f"{len(missing)} tensor(s) missing, e.g. {missing[0]}"] if missing else []
        problems += [f"{len(extra)} unexpected tensor(s), e.g. {extra[0]}"] if extra else []
        raise CheckpointError(f"the weights do not match {source}: {'; '.join(problems)}", hint=OTHER_RUN)
    for name, tensor in expected.items():
        if stored.shapes[name] != tuple(tensor.shape):
            raise CheckpointError(
                f"{stored.files[name].name}: {name} has shape {stored.shapes[name]}, the structure of {source} "
                f"needs {tuple(tensor.shape)}",
                hint="config.json or the group records do not describe these weights; keep the files written "
                "together, or compress again",
            )
    if stored.aliases is not None and stored.aliases != expected_aliases:
        raise CheckpointError(f"the weights share tensors differently from the structure of {source}", hint=OTHER_RUN)


def load_stored(model: nn.Module, stored: StoredTensors, dtype: torch.dtype | None = None) -> None:
    """Fill ``model`` file by file (after :func:`check_stored`); floating tensors cast to ``dtype`` when given, and
    every alias tied back to its canonical tensor."""
    expected, aliases = canonical_tensors(model)
    for path in sorted(set(stored.files.values())):
        try:
            with safe_open(str(path), "pt") as handle:
                for name in stored.names_in(path):
                    if name not in expected:
                        continue
                    tensor = handle.get_tensor(name)
                    if tensor.is_floating_point():
                        tensor = tensor.to(dtype or expected[name].dtype)
                    _assign(model, name, tensor)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path} cannot be read: {exc}", hint=DAMAGED) from exc
    tie(model, aliases)


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    if leaf in module._parameters:
        old = module._parameters[leaf]
        module._parameters[leaf] = nn.Parameter(tensor, requires_grad=old.requires_grad if old is not None else False)
    else:
        module._buffers[leaf] = tensor


def tie(model: nn.Module, aliases: Mapping[str, str]) -> None:
    """Make every alias name hold its canonical tensor object again (tied embeddings, shared bases)."""
    for alias, canonical in aliases.items():
        module_name, _, leaf = alias.rpartition(".")
        module = model.get_submodule(module_name)
        target = model.get_parameter(canonical) if leaf in module._parameters else model.get_buffer(canonical)
        (module._parameters if leaf in module._parameters else module._buffers)[leaf] = target


def left_on_meta(model: nn.Module) -> list[str]:
    """Names of parameters and buffers still without values."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return [name for name, tensor in named if tensor.device.type == "meta"]
