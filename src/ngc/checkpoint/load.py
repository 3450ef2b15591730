"""Load a checkpoint folder: read ``ngc.json``, rebuild the structure on its config, load the weights strictly."""

from __future__ import annotations

import time
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ngc.arch import arch_spec
from ngc.checkpoint.manifest import (
    MANIFEST,
    WEIGHTS,
    CheckpointError,
    check_manifest,
    groups_from_records,
    is_checkpoint,
    read_manifest,
)
from ngc.checkpoint.tensors import load_weights
from ngc.models.load import LoadedModel, load_model, parse_dtype
from ngc.modules.swap import factorize


def require_checkpoint(folder: Path) -> None:
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder", hint="give the folder that `ngc compress --out` wrote")
    if not is_checkpoint(folder):
        raise CheckpointError(
            f"{folder} is not an ngc checkpoint (no {MANIFEST})",
            hint="give the folder that `ngc compress --out` wrote; plain model folders load with ngc.load_model",
        )


def load(path: str | Path, *, dtype: str | None = None, device: str = "cpu") -> PreTrainedModel:
    """The compressed transformers model saved at ``path``, in eval mode (``dtype``: default the stored one)."""
    folder = Path(path).expanduser()
    require_checkpoint(folder)
    manifest = read_manifest(folder)
    config = AutoConfig.from_pretrained(folder)
    check_manifest(manifest, folder / MANIFEST, config)
    arch_spec(config)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing", hint="the checkpoint is incomplete; compress again")
    model = AutoModelForCausalLM.from_config(config, dtype=parse_dtype(dtype or manifest.get("dtype", "float32")))
    groups, ranks = groups_from_records(manifest["groups"])
    try:
        factorize(model, groups, ranks)
    except (KeyError, AttributeError, ValueError) as exc:
        raise CheckpointError(
            f"the groups in {folder / MANIFEST} do not fit the model that config.json describes: {exc}",
            hint="the manifest and config.json come from different models; compress again",
        ) from exc
    load_weights(model, weights, folder / MANIFEST)
    return model.to(device).eval()


def load_checkpoint(folder: str | Path, *, dtype: str | None = None, device: str = "cpu") -> LoadedModel:
    """A compressed model with its tokenizer, ready for evaluation."""
    start = time.perf_counter()
    folder = Path(folder).expanduser()
    model = load(folder, dtype=dtype, device=device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return LoadedModel(model, tokenizer, arch_spec(model), str(folder), folder, time.perf_counter() - start)


def load_any(name: str, *, dtype: str = "float32", device: str = "cpu", cache: str | Path | None = None) -> LoadedModel:
    """What the CLI accepts as MODEL: an ngc checkpoint folder, or anything ``load_model`` loads."""
    path = Path(name).expanduser()
    if path.is_dir() and is_checkpoint(path):
        return load_checkpoint(path, dtype=dtype, device=device)
    return load_model(name, dtype=dtype, device=device, cache=cache)
