"""Convert a GGUF file into an ordinary float safetensors folder, once, so later loads take seconds.

transformers de-quantises GGUF tensors into a float model, but refuses ``save_pretrained`` on it (the config
still carries the GGUF ``quantization_config``). So: load, drop that entry, rebuild the model from the config,
copy the state dict in strictly, save. The folder is written atomically with a ``ngc_source.json`` that records
where it came from.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ngc.arch import arch_spec
from ngc.atomic import atomic_folder, write_json_atomic
from ngc.errors import DataFormatError, MissingPackageError

SOURCE_FILE = "ngc_source.json"


def require_gguf_support() -> None:
    """Raise ``MissingPackageError`` unless the packages transformers needs to read GGUF are installed."""
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingPackageError(
            f"reading a .gguf file needs the package(s) {', '.join(missing)}, which are not installed",
            hint=f"pip install {' '.join(missing)}",
        )


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def read_source(folder: Path) -> dict[str, Any] | None:
    """The provenance a converted folder records, or None if it has none or is incomplete (no config.json)."""
    if not (folder / "config.json").is_file():
        return None
    try:
        return json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@contextmanager
def _unreadable_as_format_error(gguf_file: Path) -> Iterator[None]:
    """What transformers or gguf raise on a damaged or foreign file becomes one clear error."""
    try:
        yield
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        raise DataFormatError(
            f"{gguf_file} could not be read as a GGUF causal language model: {exc}",
            hint="check that the file is a complete GGUF export of a supported family",
        ) from exc


def convert_gguf(gguf_file: Path, out_folder: Path, source: dict[str, Any]) -> Path:
    """De-quantise ``gguf_file`` to a float32 Hugging Face folder at ``out_folder`` (atomically)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    require_gguf_support()
    gguf_file = Path(gguf_file)
    folder, name = str(gguf_file.parent), gguf_file.name
    with _unreadable_as_format_error(gguf_file):
        metadata = AutoConfig.from_pretrained(folder, gguf_file=name)  # metadata only
    arch_spec(metadata)  # refuse an unsupported family before de-quantising anything
    with _unreadable_as_format_error(gguf_file):
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    with atomic_folder(out_folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / SOURCE_FILE, {**source, "gguf_file": str(gguf_file)})
    return out_folder
