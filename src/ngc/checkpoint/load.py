"""Load a checkpoint folder: read its structure, build it on the meta device, load the weights strictly.

The dense model is never allocated: the skeleton is built under ``torch.device("meta")``, its dense modules are
swapped for the factorised ones on meta, the stored tensors are read file by file into place, and the buffers
that are not stored (rotary ``inv_freq``, embedding scales) are computed by the family's own ``_init_weights``, as
transformers' ``from_pretrained`` does. (accelerate's ``init_empty_weights`` keeps buffers real but creates every
parameter on the CPU before moving it to meta: one dense matrix at a time would still be allocated.)
Formats 1 (one ``model.safetensors``, structure in ``ngc.json`` only) and 2 (sharded, ``config.json`` names
ngc) both load here; format 1 with a one-line warning that ``ngc upgrade`` rewrites it for transformers' loaders.
"""

from __future__ import annotations

import logging
import re
import shlex
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ngc.arch import arch_spec
from ngc.checkpoint.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    CheckpointError,
    check_manifest,
    guard_name,
    is_checkpoint,
    quantization_config,
)
from ngc.checkpoint.structure import Structure, build_structure, ngc_quantization_config, read_structure
from ngc.checkpoint.tensors import check_stored, left_on_meta, load_stored, read_stored
from ngc.errors import UsageError
from ngc.models.load import LoadedModel, load_model, parse_dtype

_FACTOR = re.compile(r"\.bases\.\d+\.B$|\.A\.\d+$|\.bases\.\d+\.Bt\.qdata$|\.A\.\d+\.qdata$")  # float, int8
log = logging.getLogger(__name__)


def require_checkpoint(folder: Path) -> None:
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder", hint="give the folder that `ngc compress --out` wrote")


def stored_dtype(structure: Structure, config: Any) -> str:
    if structure.manifest is not None and isinstance(structure.manifest.get("dtype"), str):
        return structure.manifest["dtype"]
    value = getattr(config, "dtype", None)
    return str(value).removeprefix("torch.") if value is not None else "float32"


def build_empty(folder: Path, dtype: str | None) -> tuple[PreTrainedModel, Structure]:
    """The compressed structure of ``folder`` on the meta device (buffers real), checked against its files."""
    require_checkpoint(folder)
    structure = read_structure(folder)
    config = AutoConfig.from_pretrained(folder)
    if structure.manifest is not None:
        check_manifest(structure.manifest, Path(structure.source), config)
    arch_spec(config)
    torch_dtype = parse_dtype(dtype or stored_dtype(structure, config))
    record = ngc_quantization_config(config)
    warn_if_old_format(folder, structure, record)
    if record is not None:  # the structure is built here; the built model is a plain one with ngc modules
        del config.quantization_config
    stored = read_stored(folder)  # headers first: a missing or damaged file is refused before any building
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    build_structure(model, structure)
    ignore = frozenset({structure.guard} - {None})
    check_stored(model, stored, structure.source, ignore)
    load_stored(model, stored, torch_dtype)
    compute_buffers(model)
    left = left_on_meta(model)
    if left:
        raise CheckpointError(
            f"{len(left)} tensor(s) of {folder} were not loaded, e.g. {left[0]}", hint="compress again"
        )
    _attach_quantizer(
        model,
        record
        or quantization_config(structure.groups, structure.ranks, guard_name(structure.groups), structure.factor_dtype),
    )
    return model, structure


def warn_if_old_format(folder: Path, structure: Structure, record: dict[str, Any] | None) -> None:
    """One line on stderr (the ``ngc`` logger) for a folder of an older format, which only ngc.load reads."""
    version = structure.manifest.get("format_version") if structure.manifest is not None else None
    if record is None and isinstance(version, int) and version < FORMAT_VERSION:
        log.warning(
            "%s is an ngc checkpoint of format %d, which transformers' from_pretrained cannot load; "
            "`ngc upgrade %s` rewrites it in format %d",
            folder,
            version,
            shlex.quote(str(folder)),
            FORMAT_VERSION,
        )


def compute_buffers(model: PreTrainedModel) -> None:
    """Give every buffer still on meta its value, computed by the family's ``_init_weights`` (parameters, all
    loaded, are marked so that it leaves them alone)."""
    for module in model.modules():
        names = [n for n, b in module._buffers.items() if b is not None and b.device.type == "meta"]
        if not names:
            continue
        for name in names:
            module._buffers[name] = torch.empty_like(module._buffers[name], device="cpu")
        for tensor in module.parameters(recurse=False):
            tensor._is_hf_initialized = True
        with torch.no_grad():
            model._init_weights(module)


def _attach_quantizer(model: PreTrainedModel, record: dict[str, Any]) -> None:
    """What transformers' loader attaches, so that ``save_pretrained`` writes an ngc checkpoint again."""
    from ngc.checkpoint.hf import NgcConfig, NgcHfQuantizer

    config = NgcConfig(**record)
    model.config.quantization_config = config
    model.hf_quantizer = NgcHfQuantizer(config, pre_quantized=True)
    model.is_quantized = True
    model.quantization_method = config.quant_method


def detach_quantizer(model: PreTrainedModel) -> None:
    """Undo :func:`_attach_quantizer` for a model made dense again (``densify``): it saves as a plain folder."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None


def load(
    path: str | Path,
    *,
    dtype: str | None = None,
    device: str = "cpu",
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, int | str] | None = None,
) -> PreTrainedModel:
    """The compressed transformers model saved at ``path``, in eval mode (``dtype``: default the stored one).

    ``device_map`` (``"auto"``, ``"balanced"``, ... or a ``{module: device}`` dict) and ``max_memory`` place the
    model over several devices with accelerate; without them it goes to ``device``.
    """
    folder = Path(path).expanduser()
    model, _ = build_empty(folder, dtype)
    if device_map is None:
        if max_memory is not None:
            raise UsageError("max_memory needs a device_map", hint='pass device_map="auto" with max_memory')
        return model.to(device).eval()
    return dispatch(model, device_map, max_memory).eval()


def dispatch(model: PreTrainedModel, device_map: str | dict[str, Any], max_memory: dict[Any, int | str] | None):
    """Place ``model`` with accelerate; a map that cannot hold it (or names unknown modules) is a UsageError."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    if isinstance(device_map, str):
        if device_map not in ("auto", "balanced", "balanced_low_0", "sequential"):
            raise UsageError(
                f"device_map {device_map!r} is not a strategy",
                hint='use "auto", "balanced", "balanced_low_0", "sequential", or a {module: device} dict',
            )
        memory = max_memory
        if device_map != "sequential":
            memory = get_balanced_memory(
                model, max_memory=max_memory, no_split_module_classes=no_split, low_zero=device_map == "balanced_low_0"
            )
        device_map = infer_auto_device_map(model, max_memory=memory, no_split_module_classes=no_split)
    _check_device_map(model, device_map)
    try:
        return dispatch_model(model, device_map=device_map)
    except (ValueError, RuntimeError, AssertionError) as exc:
        raise UsageError(f"the device_map cannot be used: {exc}", hint="check the devices it names") from exc


def _check_device_map(model: PreTrainedModel, device_map: dict[str, Any]) -> None:
    if "disk" in set(map(str, device_map.values())):
        spilled = [name for name, where in device_map.items() if str(where) == "disk"]
        raise UsageError(
            f"the model does not fit the devices' memory: {len(spilled)} module(s) would go to disk, e.g. {spilled[0]}",
            hint="give more max_memory, more devices, or a device with room (disk offload is not supported)",
        )
    names = [name for name, _ in model.named_parameters()] + [name for name, _ in model.named_buffers()]
    covered = [n for n in names if any(n == k or n.startswith(f"{k}.") or k == "" for k in device_map)]
    if len(covered) != len(names):
        missing = next(n for n in names if n not in set(covered))
        raise UsageError(
            f"the device_map places no device for {missing}",
            hint='name every top-level module in the map (or "" for all), or use device_map="auto"',
        )


def load_checkpoint(folder: str | Path, *, dtype: str | None = None, device: str = "cpu") -> LoadedModel:
    """A compressed model with its tokenizer, ready for evaluation."""
    start = time.perf_counter()
    folder = Path(folder).expanduser()
    model = load(folder, dtype=dtype, device=device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return LoadedModel(model, tokenizer, arch_spec(model), str(folder), folder, time.perf_counter() - start)


def is_ngc_folder(path: Path) -> bool:
    """A folder with ``ngc.json`` or whose ``config.json`` names ngc as its quantization method."""
    if is_checkpoint(path):
        return True
    from ngc.checkpoint.structure import read_config_json

    try:
        config = read_config_json(path)
    except CheckpointError:
        return False
    return config is not None and ngc_quantization_config(config) is not None


def refuse_orphan_factors(folder: Path) -> None:
    """A folder whose weights hold factorised tensors (``.bases.0.B``) but no ngc records is a damaged checkpoint:
    transformers would build the dense model and fill it at random."""
    try:
        names = list(read_stored(folder).files)
    except CheckpointError:
        return  # not safetensors weights of ours: transformers reports its own problem
    factors = [name for name in names if _FACTOR.search(name)]
    if factors:
        raise CheckpointError(
            f"{folder} holds factorised tensors (e.g. {factors[0]}) but neither {MANIFEST} nor an ngc "
            "quantization_config in config.json, so its structure cannot be rebuilt",
            hint=f"restore {MANIFEST} (or config.json) from the folder `ngc compress` wrote, or compress again",
        )


def load_any(name: str, *, dtype: str = "float32", device: str = "cpu", cache: str | Path | None = None) -> LoadedModel:
    """What the CLI accepts as MODEL: an ngc checkpoint folder, or anything ``load_model`` loads."""
    path = Path(name).expanduser()
    if path.is_dir() and is_ngc_folder(path):
        return load_checkpoint(path, dtype=dtype, device=device)
    return load_model(name, dtype=dtype, device=device, cache=cache)
