"""Load a checkpoint folder: read ``ngc.json``, rebuild the structure on the base config, load weights strictly."""

from __future__ import annotations

import time
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_model as load_safetensors
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ngc.arch import arch_spec
from ngc.checkpoint.manifest import WEIGHTS, CheckpointError, groups_from_records, is_checkpoint, read_manifest
from ngc.models.load import LoadedModel, load_model, parse_dtype
from ngc.modules.swap import factorize


def load_checkpoint(folder: str | Path, *, dtype: str = "float32", device: str = "cpu") -> LoadedModel:
    """A compressed model ready for evaluation (eval mode), with its tokenizer."""
    start = time.perf_counter()
    folder = Path(folder)
    manifest = read_manifest(folder)
    config = AutoConfig.from_pretrained(folder)
    spec = arch_spec(config)
    model = AutoModelForCausalLM.from_config(config, dtype=parse_dtype(dtype))
    groups, ranks = groups_from_records(manifest["groups"])
    factorize(model, groups, ranks)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing", hint="the checkpoint is incomplete; compress again")
    try:
        missing, unexpected = load_safetensors(model, str(weights), strict=False)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights} cannot be read: {exc}", hint="the file is damaged; compress again") from exc
    except RuntimeError as exc:  # shapes differ from those the manifest describes
        mismatches = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        raise CheckpointError(
            f"{weights} does not match {folder / 'ngc.json'}: {mismatches[0] if mismatches else exc}"
            + (f" (and {len(mismatches) - 1} more)" if len(mismatches) > 1 else ""),
            hint="the weights and the manifest come from different runs; compress again",
        ) from exc
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not match {folder / 'ngc.json'}: missing {sorted(missing)[:4]}, "
            f"unexpected {sorted(unexpected)[:4]}",
            hint="the weights and the manifest come from different runs; compress again",
        )
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return LoadedModel(model.to(device).eval(), tokenizer, spec, str(folder), folder, time.perf_counter() - start)


def load(name: str, *, dtype: str = "float32", device: str = "cpu", cache: str | Path | None = None) -> LoadedModel:
    """Any model ``ngc`` accepts: an ngc checkpoint folder, or what :func:`ngc.models.load.load_model` loads."""
    path = Path(name).expanduser()
    if path.is_dir() and is_checkpoint(path):
        return load_checkpoint(path, dtype=dtype, device=device)
    return load_model(name, dtype=dtype, device=device, cache=cache)
