"""JSON shapes of results. Keys are stable: other tools read them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ngc import __version__
from ngc.eval.perplexity import PerplexityResult
from ngc.models.load import LoadedModel


def model_record(loaded: LoadedModel) -> dict[str, Any]:
    return {
        "name": loaded.name,
        "family": loaded.spec.family,
        "model_type": loaded.model.config.model_type,
        "dtype": loaded.dtype,
        "folder": str(loaded.folder) if loaded.folder else None,
        "load_seconds": round(loaded.load_seconds, 3),
    }


def eval_payload(loaded: LoadedModel, ppl: Sequence[PerplexityResult]) -> dict[str, Any]:
    """``{"ngc_version", "model": {...}, "ppl": {"<corpus>": {"ppl", "tokens", "windows", "window_len", ...}}}``"""
    return {
        "ngc_version": __version__,
        "model": model_record(loaded),
        "ppl": {result.corpus: result.to_dict() for result in ppl},
    }
