"""Weights as sharded safetensors, written as they come: Hugging Face's standard layout, byte-for-byte deterministic.

A folder holds either one ``model.safetensors`` or ``model-00001-of-0000N.safetensors`` ... plus
``model.safetensors.index.json`` (``{"metadata": {...}, "weight_map": {name: file}}``). A tensor shared under several
names (a cross-layer basis, tied embeddings) is stored once under its canonical name; the other names are recorded
as ``{"ngc.aliases": json {alias: canonical}}`` in the single file's header metadata or in the index's metadata.

Files are serialised here rather than by ``safetensors.torch.save_file``, whose header metadata comes out in a
varying order: the same tensors always give the same bytes.
"""

from __future__ import annotations

import json
import os
import struct
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
ALIASES_KEY = "ngc.aliases"
DEFAULT_MAX_SHARD_BYTES = 2 * 2**30

DTYPE_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}


def shard_file_name(index: int, count: int) -> str:
    """``model-00001-of-00003.safetensors`` for ``index`` 1 of ``count`` 3 (1-based, Hugging Face's naming)."""
    return f"model-{index:05d}-of-{count:05d}.safetensors"


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write CPU tensors as one safetensors file with a sorted header; data in (larger element first, name) order,
    so every tensor starts at an offset its element size divides."""
    order = sorted(tensors, key=lambda name: (-tensors[name].element_size(), name))
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    offset = 0
    for name in order:
        tensor = tensors[name]
        if tensor.dtype not in DTYPE_CODES:
            raise ValueError(f"{name}: dtype {tensor.dtype} cannot be stored in safetensors")
        size = tensor_bytes(tensor)
        header[name] = {
            "dtype": DTYPE_CODES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # data starts 8-byte aligned
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for name in order:
            _write_tensor(handle, tensors[name])
        handle.flush()
        os.fsync(handle.fileno())


def _write_tensor(handle: BinaryIO, tensor: torch.Tensor) -> None:
    if tensor.numel() == 0:
        return
    flat = tensor.reshape(-1)
    raw = flat.view(torch.uint8) if flat.dtype != torch.bool else flat.to(torch.uint8)
    handle.write(memoryview(raw.numpy()))


class TensorNames:
    """The first name given to each tensor object, kept across calls (weakly: a freed tensor is forgotten), so that a
    tensor met again under another name (a cross-layer basis seen from a later layer) becomes an alias."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[weakref.ref[torch.Tensor], str]] = {}

    def first_name(self, tensor: torch.Tensor) -> str | None:
        entry = self._by_id.get(id(tensor))
        if entry is None or entry[0]() is not tensor:
            return None
        return entry[1]

    def remember(self, tensor: torch.Tensor, name: str) -> None:
        self._by_id[id(tensor)] = (weakref.ref(tensor), name)


def canonical_tensors(
    module: nn.Module, prefix: str = "", names: TensorNames | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``({canonical name: tensor}, {other name: canonical name})`` over ``module``'s state dict.

    Names are ``prefix + name`` (give ``"model.layers.3."`` for one decoder layer). A tensor is an alias when it is
    the same object as an earlier one (in this module, or in an earlier call sharing ``names``), or, off the meta
    device, the same storage, shape and dtype as an earlier one of this call.
    """
    names = TensorNames() if names is None else names
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    by_storage: dict[tuple[str, int, tuple[int, ...], torch.dtype], str] = {}
    for local, tensor in module.state_dict(keep_vars=True).items():
        name = prefix + local
        first = names.first_name(tensor)
        storage_key = (str(tensor.device), tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if first is None and tensor.device.type != "meta" and tensor.numel():
            first = by_storage.get(storage_key)
        if first is not None:
            aliases[name] = first
            continue
        names.remember(tensor, name)
        if tensor.device.type != "meta":
            by_storage[storage_key] = name
        tensors[name] = tensor.detach()
    return tensors, aliases


class ShardWriter:
    """Collect named tensors and write them as shards of about ``max_shard_bytes`` each, as soon as a shard is full,
    so memory holds about one shard. ``finish`` names the files and writes the index.

    Tensors may come from any device; they are copied to the CPU, contiguous, floating ones cast to ``dtype`` when
    given. Shards are written under temporary names in ``folder`` and renamed by ``finish``.
    """

    def __init__(
        self, folder: Path, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, dtype: torch.dtype | None = None
    ) -> None:
        if max_shard_bytes <= 0:
            raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
        self.folder = Path(folder)
        self.max_shard_bytes = max_shard_bytes
        self.dtype = dtype
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffer_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []  # (temporary path, tensor names)
        self._stored: set[str] = set()
        self._aliases: dict[str, str] = {}
        self._total_bytes = 0
        self._finished = False

    def add(self, tensors: Mapping[str, torch.Tensor], aliases: Mapping[str, str] | None = None) -> None:
        """Add tensors (``{name: tensor}``) and aliases (``{other name: canonical name}``; the canonical name may
        come from this or an earlier call). A name given twice is a ``ValueError``."""
        if self._finished:
            raise ValueError("ShardWriter.add after finish")
        for name in tensors:
            self._check_new(name)
        aliases = dict(aliases or {})
        for alias in aliases:
            self._check_new(alias)
            if alias in tensors:
                raise ValueError(f"{alias} is given both as a tensor and as an alias")
        for name, tensor in tensors.items():
            self._add_tensor(name, tensor)
        for alias, canonical in aliases.items():
            canonical = self._aliases.get(canonical, canonical)
            if canonical not in self._stored:
                raise ValueError(f"alias {alias} names {canonical}, which is not a stored tensor")
            self._aliases[alias] = canonical

    def _check_new(self, name: str) -> None:
        if name in self._stored or name in self._aliases:
            raise ValueError(f"tensor name {name} is given twice")

    def _add_tensor(self, name: str, tensor: torch.Tensor) -> None:
        if tensor.device.type == "meta":
            raise ValueError(f"{name} is on the meta device: it has no values to write")
        source = tensor.detach()
        dtype = self.dtype if self.dtype is not None and source.is_floating_point() else source.dtype
        tensor = source.to(device="cpu", dtype=dtype).contiguous()
        size = tensor_bytes(tensor)
        if tensor.data_ptr() == source.data_ptr() or tensor.untyped_storage().nbytes() > size:
            tensor = tensor.clone()  # own copy: later in-place changes to the model do not reach the file
        if self._buffer and self._buffer_bytes + size > self.max_shard_bytes:
            self._flush()
        self._buffer[name] = tensor
        self._buffer_bytes += size
        self._stored.add(name)
        self._total_bytes += size
        if self._buffer_bytes >= self.max_shard_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        path = self.folder / f".shard-{len(self._shards) + 1:05d}.safetensors.partial"
        write_safetensors(path, self._buffer, {"format": "pt"})
        self._shards.append((path, sorted(self._buffer)))
        self._buffer, self._buffer_bytes = {}, 0

    def finish(self) -> int:
        """Write what is left, name the files, write the index (several shards) or keep one ``model.safetensors``;
        returns the bytes of tensor data written."""
        if self._finished:
            raise ValueError("ShardWriter.finish called twice")
        self._finished = True
        aliases = json.dumps(self._aliases, sort_keys=True)
        if not self._shards:  # everything fits one file: write it directly, aliases in its header
            write_safetensors(self.folder / SINGLE_FILE, self._buffer, {"format": "pt", ALIASES_KEY: aliases})
            self._buffer = {}
            return self._total_bytes
        self._flush()
        count = len(self._shards)
        weight_map: dict[str, str] = {}
        for number, (path, names) in enumerate(self._shards, start=1):
            final = shard_file_name(number, count) if count > 1 else SINGLE_FILE
            os.replace(path, self.folder / final)
            weight_map.update(dict.fromkeys(names, final))
        if count == 1:  # a single flushed shard: rewrite its header with the aliases
            _rewrite_single(self.folder / SINGLE_FILE, aliases)
            return self._total_bytes
        index = {
            "metadata": {"total_size": self._total_bytes, ALIASES_KEY: aliases},
            "weight_map": dict(sorted(weight_map.items())),
        }
        text = json.dumps(index, indent=2, sort_keys=True) + "\n"
        (self.folder / INDEX_FILE).write_text(text, encoding="utf-8")
        return self._total_bytes


def _rewrite_single(path: Path, aliases: str) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(path))  # may map the file: write beside it, then replace
    partial = path.with_name(path.name + ".partial")
    write_safetensors(partial, tensors, {"format": "pt", ALIASES_KEY: aliases})
    os.replace(partial, path)
