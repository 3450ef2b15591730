"""JSON shapes of results. Keys are stable: other tools read them."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from ngc import __version__
from ngc.eval.perplexity import PerplexityResult
from ngc.eval.speed import BenchResult
from ngc.eval.tasks import TaskResult
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


def eval_payload(
    loaded: LoadedModel, ppl: Sequence[PerplexityResult], tasks: Sequence[TaskResult] = ()
) -> dict[str, Any]:
    """``{"ngc_version", "model": {...}, "ppl": {"<corpus>": {"ppl", "tokens", ...}},
    "tasks": {"<task>": {"acc", "acc_norm", "n", ...}}}``"""
    return {
        "ngc_version": __version__,
        "model": model_record(loaded),
        "ppl": {result.corpus: result.to_dict() for result in ppl},
        "tasks": {result.task: result.to_dict() for result in tasks},
    }


def examples_jsonl(tasks: Sequence[TaskResult]) -> str:
    """One JSON line per scored item: ``{"task", "doc_id", "correct", "correct_norm", "context", "gold"}``."""
    lines = [
        json.dumps({"task": result.task, **dataclasses.asdict(example)}, ensure_ascii=False)
        for result in tasks
        for example in result.examples
    ]
    return "".join(line + "\n" for line in lines)


def bench_payload(model: str, reference: str, result: BenchResult, peak: dict[str, Any]) -> dict[str, Any]:
    """``{"prefill": [{"batch", "len", "tokens_per_s", "reference_tokens_per_s", "speedup", "limit"}],
    "decode": {...}, "peak_memory_bytes": {...}, ...}``"""
    return {
        "ngc_version": __version__,
        "model": model,
        "reference": reference,
        "device": result.device,
        "dtype": result.dtype,
        "threads": result.threads,
        "warmup": result.warmup,
        "repeats": result.repeats,
        "mac_ratio": result.mac_ratio,
        "bytes_ratio": result.bytes_ratio,
        "prefill": [row.to_dict() for row in result.prefill],
        "decode": None if result.decode is None else result.decode.to_dict(),
        "peak_memory_bytes": peak,
    }
