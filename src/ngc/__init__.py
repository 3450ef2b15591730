"""ngc: compress Hugging Face causal LMs into networks of communicating neuronal groups.

The public API is imported lazily so that ``import ngc`` stays light (no transformers, no matplotlib).
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("ngc")
except PackageNotFoundError:  # run from a source tree (PYTHONPATH=src) without installing
    __version__ = "0+source"

_LAZY = {
    "compress": "ngc.api",
    "collect_statistics": "ngc.api",
    "compress_folder": "ngc.pipeline.folder",
    "PipelineOptions": "ngc.pipeline.run",
    "CompressionResult": "ngc.api",
    "CompressionConfig": "ngc.config",
    "CalibConfig": "ngc.config",
    "account": "ngc.accounting",
    "load": "ngc.checkpoint.load",
    "save": "ngc.checkpoint.save",
    "save_checkpoint": "ngc.checkpoint.save",
    "quantize_factors": "ngc.modules.int8",
    "load_model": "ngc.models.load",
    "LoadedModel": "ngc.models.load",
    "perplexity": "ngc.eval.perplexity",
    "PerplexityResult": "ngc.eval.perplexity",
    "load_corpus": "ngc.data.corpora",
    "load_text_file": "ngc.data.corpora",
    "calibration_windows": "ngc.data.windows",
    "find_blocks": "ngc.arch",
    "role_weights": "ngc.arch",
    "ARCHS": "ngc.arch",
}

__all__ = ["__version__", *_LAZY]

# transformers loads ngc checkpoints (config.json names quant_method "ngc") once ngc is imported; the
# registration waits until transformers' quantizer registry is imported, so `import ngc` stays light.
from ngc.checkpoint.hook import install as _install_transformers_hook  # noqa: E402

_install_transformers_hook()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ngc' has no attribute {name!r}")
