"""One function loads every kind of model name ngc accepts.

``MODEL`` may be
- a packaged alias (``smollm2-135m``, ``gemma3-270m``): converted once into the cache, then loaded from there;
- a local Hugging Face folder (with ``config.json``);
- a local ``.gguf`` file: converted once into the cache (keyed by the file's SHA-256), then loaded from there;
- a hub id ``org/name``: only when online (transformers' own cache and offline mode apply).
The architecture is checked against ``ngc.arch`` from the config, before any weight is read.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ngc.arch import ArchSpec, arch_spec
from ngc.errors import ModelNotFoundError, UsageError
from ngc.models.gguf import convert_gguf, file_sha256, read_source, require_gguf_support
from ngc.models.packaged import PACKAGED, packaged_folder
from ngc.settings import cache_dir

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class LoadedModel:
    """A model ready for evaluation, with what is needed to feed it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: ArchSpec
    name: str  # what the user asked for
    folder: Path | None  # the local folder the weights came from (None for a hub id)
    load_seconds: float

    @property
    def dtype(self) -> str:
        return str(self.model.dtype).removeprefix("torch.")

    @property
    def context_len(self) -> int | None:
        value = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        return int(value) if value else None

    @property
    def bos_token_id(self) -> int | None:
        """BOS to put at each window start, for families that need it (SPEC §7); else None."""
        return self.tokenizer.bos_token_id if self.spec.needs_bos else None


def known_models() -> str:
    return ", ".join(PACKAGED)


def parse_dtype(name: str, option: str = "dtype") -> torch.dtype:
    """The torch dtype called ``name``; ``option`` names where it was given (e.g. ``--save-dtype``) in the error."""
    if name not in DTYPES:
        raise UsageError(f"unknown {option} {name!r}", hint=f"use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_model(name: str, cache: Path) -> tuple[Path | str, bool]:
    """Where to load ``name`` from: (local folder, False) or (hub id, True). Converts GGUF on first use."""
    if name in PACKAGED:
        return packaged_folder(name, cache), False
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} is a folder but holds no config.json, so it is not a Hugging Face model folder",
                hint="point at the folder that save_pretrained wrote, or at a .gguf file",
            )
        return path, False
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelNotFoundError(
                f"{path} is a file but not a .gguf model",
                hint="give a .gguf file, a Hugging Face model folder, or a packaged alias: " + known_models(),
            )
        return _converted_gguf(path, cache), False
    if _HUB_ID.match(name) and not name.lower().endswith(".gguf"):
        return name, True
    if os.sep in name or name.lower().endswith(".gguf") or name.startswith(("~", ".")):
        raise ModelNotFoundError(
            f"no such file or folder: {path}",
            hint="check the path; or use a packaged alias: " + known_models(),
        )
    raise ModelNotFoundError(
        f"model {name!r} is not a packaged alias, an existing folder or .gguf file, or a hub id",
        hint=f"packaged aliases: {known_models()}; or a local path, or a hub id like org/name (online only)",
    )


def _converted_gguf(path: Path, cache: Path) -> Path:
    require_gguf_support()
    digest = file_sha256(path)
    folder = cache / "gguf" / digest[:16]
    if read_source(folder) is None:
        log.info("converting %s to a float folder in %s, once", path.name, folder)
        convert_gguf(path, folder, {"sha256": digest})
    return folder


def load_model(
    name: str,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    cache: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Load ``name`` (alias, folder, .gguf, hub id) for evaluation, in eval mode on ``device``.

    An ngc checkpoint folder loads as the compressed model (:func:`ngc.checkpoint.load.load_checkpoint`); a folder
    holding factorised tensors without the records that rebuild them is refused.
    """
    torch_dtype = parse_dtype(dtype)
    start = time.perf_counter()
    where, from_hub = resolve_model(name, cache_dir(cache))
    if not from_hub:
        from ngc.checkpoint.load import is_ngc_folder, load_checkpoint, refuse_orphan_factors

        if is_ngc_folder(Path(where)):
            return load_checkpoint(where, dtype=dtype, device=device)
        refuse_orphan_factors(Path(where))
    if from_hub and os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ModelNotFoundError(
            f"{name!r} is a hub id, and HF_HUB_OFFLINE is set",
            hint=f"use a local folder, a .gguf file or an alias ({known_models()}), or unset HF_HUB_OFFLINE",
        )
    try:
        config = AutoConfig.from_pretrained(where)
    except OSError as exc:
        if not from_hub:
            raise
        raise ModelNotFoundError(
            f"could not fetch {name!r} from the Hugging Face hub: {str(exc).splitlines()[0]}",
            hint=f"check the id and the network, or use a local folder, a .gguf file or an alias: {known_models()}",
        ) from exc
    spec = arch_spec(config)  # refuse unsupported families before reading any weight
    tokenizer = AutoTokenizer.from_pretrained(where)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype).to(device).eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        spec=spec,
        name=name,
        folder=None if from_hub else Path(where),
        load_seconds=time.perf_counter() - start,
    )
