"""Where a decoder layer's weights come from and where they go once the layer is done.

- :class:`ModelSource`: a model already in memory. A layer is moved to the compute device for its turn and
  back to where it lived afterwards (nothing moves when both are the CPU).
- :class:`FolderSource`: a Hugging Face folder (one or sharded safetensors files with their index), never
  materialised whole. The skeleton is built on the meta device; embeddings, final norm and head are read once;
  each layer is read from the shards when its turn comes and, once written out, returned to the meta device.
  Peak memory: embeddings + the layers in flight + the calibration hidden states + one layer's statistics.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ngc.arch import arch_spec, decoder_layers
from ngc.errors import ModelNotFoundError

#: receives a finished part of the model: ``(tensors by state-dict name, {alias: canonical name})``
Sink = Callable[[dict[str, torch.Tensor], dict[str, str]], None]

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class WeightsDigest:
    """SHA-256 of a model's weights that can be fed tensor by tensor in any order (a layer at a time).

    Each tensor contributes the digest of its name, shape, dtype and bytes; the final digest is over those
    lines in name order, so streaming a folder layer by layer gives the same value as hashing the whole model.
    """

    def __init__(self) -> None:
        self._lines: dict[str, str] = {}

    def add(self, name: str, tensor: torch.Tensor) -> None:
        tensor = tensor.detach().cpu().contiguous()
        digest = hashlib.sha256(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        if tensor.numel():
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
        self._lines[name] = digest.hexdigest()

    def hexdigest(self) -> str:
        total = hashlib.sha256()
        for name in sorted(self._lines):
            total.update(f"{name}={self._lines[name]}\n".encode())
        return total.hexdigest()

    @staticmethod
    def of_model(model: nn.Module) -> str:
        digest = WeightsDigest()
        for name, tensor in model.state_dict().items():
            digest.add(name, tensor)
        return digest.hexdigest()


def layer_prefix(model: nn.Module, index: int) -> str:
    return f"{arch_spec(model).layers}.{index}."


def _tied_names(model: nn.Module) -> list[list[str]]:
    """State-dict names grouped by the tensor object they name (tied embeddings share one)."""
    by_object: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        by_object.setdefault(id(tensor), []).append(name)
    return list(by_object.values())


def split_aliases(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``({first name: tensor}, {other name: first name})``: a tensor named twice is written once."""
    canonical: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    owner: dict[int, str] = {}
    for name, tensor in tensors.items():
        if id(tensor) in owner:
            aliases[name] = owner[id(tensor)]
            continue
        owner[id(tensor)] = name
        canonical[name] = tensor.detach()
    return canonical, aliases


class ModelSource:
    """Layers of a model in memory, each moved to ``device`` for its turn and back home afterwards."""

    def __init__(self, model: nn.Module, device: torch.device | str) -> None:
        self.model = model
        self.device = torch.device(device)
        self._home = {i: _device_of(layer) for i, layer in enumerate(decoder_layers(model))}

    def base_sha256(self) -> str:
        return WeightsDigest.of_model(self.model)

    def onload(self, index: int) -> nn.Module:
        return decoder_layers(self.model)[index].to(self.device)

    def release(self, indices: Iterable[int], sink: Sink | None = None) -> None:
        """Layers done: moved home (and handed to ``sink`` when one is given)."""
        layers = decoder_layers(self.model)
        for index in indices:
            layer = layers[index].to(self._home[index])
            if sink is not None:
                sink(*split_aliases(_named_tensors(layer, layer_prefix(self.model, index))))

    def finish(self, sink: Sink | None = None) -> None:
        if sink is not None:
            sink(*split_aliases(_outside_layers(self.model)))


def _device_of(module: nn.Module) -> torch.device:
    tensor = next(iter(module.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _named_tensors(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + name: tensor for name, tensor in module.state_dict(keep_vars=True).items()}


def _outside_layers(model: nn.Module) -> dict[str, torch.Tensor]:
    layers = arch_spec(model).layers + "."
    return {n: t for n, t in model.state_dict(keep_vars=True).items() if not n.startswith(layers)}


def read_index(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it, for a single-file or a sharded folder."""
    index = folder / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ModelNotFoundError(
                f"{index} cannot be read as a safetensors index: {exc}",
                hint="the folder is damaged; copy or download the model again",
            ) from exc
        files = {name: folder / str(file) for name, file in weight_map.items()}
        missing = sorted({str(p.name) for p in files.values() if not p.is_file()})
        if missing:
            raise ModelNotFoundError(
                f"{index} names shard(s) that are not in {folder}: {', '.join(missing[:4])}",
                hint="the download is incomplete; copy the missing shards",
            )
        return files
    single = folder / SINGLE
    if not single.is_file():
        raise ModelNotFoundError(
            f"{folder} holds neither {SINGLE} nor {INDEX}",
            hint="give a Hugging Face folder with safetensors weights (convert .bin weights with save_pretrained)",
        )
    return {name: single for name in _file_names(single)}


def _file_names(path: Path) -> list[str]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    except (SafetensorError, OSError) as exc:
        raise ModelNotFoundError(f"{path} cannot be read: {exc}", hint="the file is damaged or truncated") from exc


def skeleton(folder: str | Path, dtype: torch.dtype) -> nn.Module:
    """The model ``folder/config.json`` describes, on the meta device (buffers such as rotary ``inv_freq`` real),
    with tied weights tied: its structure and shapes, no weights."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    arch_spec(config)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()
    return model.eval()


class FolderSource:
    """Layers read from a Hugging Face folder's safetensors shards, one at a time, onto ``device``."""

    def __init__(self, folder: str | Path, *, dtype: torch.dtype, device: torch.device | str) -> None:
        self.folder = Path(folder)
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = skeleton(self.folder, dtype)
        self.files = _model_names(self.model, read_index(self.folder))
        self.digest = WeightsDigest()
        self._ties = {name: names for names in _tied_names(self.model) for name in names}
        self._check_names()
        layers = arch_spec(self.model).layers + "."
        self._load([n for n in self._ties if not n.startswith(layers)])
        for name, buffer in self.model.named_buffers():
            if buffer.device.type != "meta":
                _assign(self.model, name, buffer.to(self.device))

    def base_sha256(self) -> str:
        return self.digest.hexdigest()

    def _check_names(self) -> None:
        """Every tensor the config's model needs is in the files (tied names: one of them)."""
        missing = [names[0] for names in _tied_names(self.model) if not any(n in self.files for n in names)]
        if missing:
            raise ModelNotFoundError(
                f"{len(missing)} tensor(s) of the model that config.json describes are not in the weights of "
                f"{self.folder}, e.g. {', '.join(missing[:3])}",
                hint="the weights and config.json come from different models, or shards are missing",
            )

    def _load(self, names: list[str]) -> None:
        """Read ``names`` (and fill every name tied to them) from the shards onto the device, shape-checked."""
        by_file: dict[Path, list[str]] = {}
        done: set[str] = set()
        for name in names:
            if name in done:
                continue
            stored = next(n for n in self._ties[name] if n in self.files)
            path, key = self.files[stored]
            by_file.setdefault(path, []).append((stored, key))
            done.update(self._ties[name])
        for path, entries in by_file.items():
            try:
                with safe_open(str(path), framework="pt", device="cpu") as handle:
                    for stored, key in entries:
                        self._place(stored, handle.get_tensor(key))
            except (SafetensorError, OSError) as exc:
                raise ModelNotFoundError(
                    f"{path} cannot be read: {exc}", hint="the shard is damaged or truncated; copy it again"
                ) from exc

    def _place(self, stored: str, tensor: torch.Tensor) -> None:
        expected = _current(self.model, stored)
        if tuple(tensor.shape) != tuple(expected.shape):
            raise ModelNotFoundError(
                f"{stored} in {self.folder} has shape {tuple(tensor.shape)}, config.json implies "
                f"{tuple(expected.shape)}",
                hint="the weights and config.json come from different models",
            )
        value = tensor.to(device=self.device, dtype=self.dtype if tensor.is_floating_point() else tensor.dtype)
        shared = None
        for name in self._ties[stored]:
            shared = _assign(self.model, name, value, shared)
            self.digest.add(name, value)

    def onload(self, index: int) -> nn.Module:
        prefix = layer_prefix(self.model, index)
        self._load([n for n in self._ties if n.startswith(prefix)])
        return decoder_layers(self.model)[index]

    def release(self, indices: Iterable[int], sink: Sink | None = None) -> None:
        """Layers done: handed to ``sink`` (the checkpoint writer), then returned to the meta device."""
        layers = decoder_layers(self.model)
        indices = list(indices)
        if sink is not None:
            named: dict[str, torch.Tensor] = {}
            for index in indices:
                named.update(_named_tensors(layers[index], layer_prefix(self.model, index)))
            sink(*split_aliases(named))
        for index in indices:
            layers[index].to("meta")

    def finish(self, sink: Sink | None = None) -> None:
        if sink is not None:
            sink(*split_aliases(_outside_layers(self.model)))


def _model_names(model: nn.Module, files: dict[str, Path]) -> dict[str, tuple[Path, str]]:
    """Model state-dict name -> (file, name in the file), through transformers' own checkpoint renamings
    (legacy layouts such as Gemma 3's ``language_model.model.*``); a key needing a real conversion is refused."""
    try:
        from transformers.core_model_loading import WeightRenaming, rename_source_key
        from transformers.modeling_utils import get_model_conversion_mapping
    except ImportError:  # a transformers without conversion mappings stores keys as the model names them
        return {key: (path, key) for key, path in files.items()}
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if not isinstance(t, WeightRenaming)]
    meta = model.state_dict()
    names: dict[str, tuple[Path, str]] = {}
    for key, path in files.items():
        renamed, converted = rename_source_key(key, renamings, converters, model.base_model_prefix, meta)
        if converted is not None:
            raise ModelNotFoundError(
                f"{key} in {path} needs a weight conversion that layer-by-layer streaming does not perform",
                hint="save the model once with transformers' save_pretrained in its current layout",
            )
        names[renamed] = (path, key)
    return names


def _current(model: nn.Module, name: str) -> torch.Tensor:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    tensor = module._parameters.get(leaf)
    return tensor if tensor is not None else module._buffers[leaf]


def _assign(model: nn.Module, name: str, value: torch.Tensor, shared: Any = None) -> Any:
    """Put ``value`` under ``name`` (a parameter keeps its kind); ``shared`` reuses one object for tied names."""
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if leaf in module._parameters:
        old = module._parameters[leaf]
        if not isinstance(shared, nn.Parameter):
            shared = nn.Parameter(value, requires_grad=bool(old is not None and old.requires_grad))
        module._parameters[leaf] = shared
    else:
        shared = value if shared is None else shared
        module._buffers[leaf] = shared
    return shared
