"""Zero-shot tasks through lm-evaluation-harness, read from local files in the data directory (SPEC §7).

Each task is the harness' own definition (its YAML: prompt, choices, target, metrics, few-shot setting) with only
the dataset swapped for the local JSONL file: at run time a small YAML per task ``include``s the harness' file and
points ``dataset_path: json`` at the data directory, so prompts and metrics cannot drift from the standard tasks.

Per-example correctness is kept (``TaskResult.examples``): the dynamics report relates it to stability.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ngc.errors import DataNotFoundError, EvaluationError, UsageError
from ngc.settings import DATA_DIR_ENV


@dataclass(frozen=True)
class TaskSource:
    """Where a harness task's definition and its local data live."""

    name: str
    harness_yaml: str  # inside lm_eval/tasks
    folder: str  # inside the data directory
    split: str  # the split the harness task scores: "test" or "validation"
    file: str
    fewshot_file: str | None = None  # the harness' few-shot split ("train"), for tasks that use one
    metric: str = "acc"  # reported as "acc"; "exact_match" for generation tasks
    filter: str = "none"  # the harness' filter whose score is reported


TASKS: dict[str, TaskSource] = {
    source.name: source
    for source in (
        TaskSource("arc_easy", "arc/arc_easy.yaml", "arc_easy", "test", "test.jsonl"),
        TaskSource("arc_challenge", "arc/arc_challenge.yaml", "arc_challenge", "test", "test.jsonl"),
        TaskSource("piqa", "piqa/piqa.yaml", "piqa", "validation", "validation.jsonl"),
        TaskSource("hellaswag", "hellaswag/hellaswag.yaml", "hellaswag", "validation", "validation.jsonl"),
        TaskSource("winogrande", "winogrande/default.yaml", "winogrande", "validation", "validation.jsonl"),
        TaskSource("openbookqa", "openbookqa/openbookqa.yaml", "openbookqa", "test", "test.jsonl"),
        TaskSource("boolq", "super_glue/boolq/default.yaml", "boolq", "validation", "validation.jsonl"),
        TaskSource(
            "gsm8k",
            "gsm8k/gsm8k.yaml",
            "gsm8k",
            "test",
            "test.jsonl",
            fewshot_file="train.jsonl",
            metric="exact_match",
            filter="strict-match",
        ),
    )
}

ZERO_SHOT_SUITE: tuple[str, ...] = (
    "arc_easy",
    "arc_challenge",
    "piqa",
    "hellaswag",
    "winogrande",
    "openbookqa",
    "boolq",
)


@dataclass(frozen=True)
class ExampleResult:
    """One scored item: its index in the task's file, whether the model got it right, and the gold text."""

    doc_id: int
    correct: bool
    correct_norm: bool | None
    context: str  # the prompt the harness scored
    gold: str  # the gold continuation (multiple choice) or reference answer (generation)


@dataclass
class TaskResult:
    task: str
    acc: float
    acc_norm: float | None
    n: int
    acc_stderr: float | None = None
    metric: str = "acc"
    examples: list[ExampleResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON shape: ``{"acc", "acc_norm", "n", "acc_stderr", "metric"}``."""
        return {
            "acc": self.acc,
            "acc_norm": self.acc_norm,
            "n": self.n,
            "acc_stderr": self.acc_stderr,
            "metric": self.metric,
        }


def parse_tasks(text: str) -> list[str]:
    """``"arc_easy,piqa"`` -> names; ``"all"`` -> every task; ``"zero-shot"`` -> all but GSM8K."""
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part == "all":
            names += list(TASKS)
        elif part == "zero-shot":
            names += list(ZERO_SHOT_SUITE)
        elif part in TASKS:
            names.append(part)
        else:
            raise UsageError(
                f"unknown task {part!r}",
                hint=f"choose from {', '.join(TASKS)}, or 'zero-shot' (all but gsm8k) or 'all'",
            )
    if not names:
        raise UsageError("no task given", hint="e.g. --tasks arc_easy,piqa")
    return list(dict.fromkeys(names))


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise UsageError(f"--limit {limit} must be at least 1", hint="leave it out to score every item")


def check_choice_task(name: str) -> None:
    """A multiple-choice task (per-item correctness from log-likelihoods), else a clear error."""
    choice = [task for task, source in TASKS.items() if source.metric == "acc"]
    if name not in choice:
        raise UsageError(f"task {name!r} is not a multiple-choice task", hint=f"choose from {', '.join(choice)}")


def task_files(source: TaskSource, root: Path | None) -> dict[str, Path]:
    """Split -> local file of a task, checked to exist."""
    if root is None:
        raise DataNotFoundError(
            f"task {source.name!r} needs a data directory, and none is set",
            hint=f"set {DATA_DIR_ENV}=/path/to/data or pass --data-dir (it must hold {source.folder}/)",
        )
    files = {source.split: root / source.folder / source.file}
    if source.fewshot_file is not None:
        files["train"] = root / source.folder / source.fewshot_file
    for path in files.values():
        if not path.is_file():
            raise DataNotFoundError(
                f"task {source.name!r}: {path} does not exist",
                hint=f"the data directory must hold {source.folder}/{path.name} (JSONL with the standard field names)",
            )
    return files


def harness_tasks_dir() -> Path:
    try:
        import lm_eval.tasks
    except ImportError:
        raise UsageError(
            "zero-shot tasks need lm-evaluation-harness", hint="pip install 'ngc[eval]' (or lm-eval>=0.4.13)"
        ) from None
    return Path(lm_eval.tasks.__file__).parent


def task_config(source: TaskSource, root: Path | None) -> dict[str, Any]:
    """The YAML of a local task: the harness' definition, dataset swapped for the local files."""
    files = task_files(source, root)
    harness = harness_tasks_dir() / source.harness_yaml
    if not harness.is_file():
        raise UsageError(
            f"this lm-eval has no {source.harness_yaml}", hint="install the tested version: pip install lm-eval==0.4.13"
        )
    return {
        "include": str(harness),
        "task": source.name,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(path) for split, path in files.items()}},
        "training_split": "train" if source.fewshot_file else None,
        "validation_split": "validation" if source.split == "validation" else None,
        "test_split": "test" if source.split == "test" else None,
        "fewshot_split": "train" if source.fewshot_file else None,
    }


def _score(row: dict[str, Any], metric: str, filt: str) -> float | None:
    value = row.get(f"{metric},{filt}")
    return None if value is None or value == "N/A" else float(value)


def _examples(samples: list[dict[str, Any]], source: TaskSource) -> list[ExampleResult]:
    examples = []
    for sample in samples:
        if sample.get("filter", source.filter) != source.filter:
            continue
        arguments = sample.get("arguments") or [[""]]
        target = sample.get("target")
        if source.metric == "acc" and isinstance(target, int) and target < len(arguments):
            context, gold = str(arguments[target][0]), str(arguments[target][1])
        else:
            context, gold = str(arguments[0][0]), str(target)
        norm = sample.get("acc_norm")
        examples.append(
            ExampleResult(
                doc_id=int(sample["doc_id"]),
                correct=bool(sample[source.metric]),
                correct_norm=None if norm is None else bool(norm),
                context=context,
                gold=gold,
            )
        )
    return sorted(examples, key=lambda e: e.doc_id)


def evaluate_tasks(
    model: Any,
    tokenizer: Any,
    names: list[str],
    root: Path | None,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    add_bos_token: bool = False,
    max_length: int | None = None,
    seed: int = 0,
) -> list[TaskResult]:
    """Score ``model`` on the named tasks with lm-evaluation-harness; ``limit`` = first N items of each task."""
    check_limit(limit)
    sources = [TASKS[name] for name in names]
    configs = [task_config(source, root) for source in sources]  # every file checked before any model work

    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    for logger in ("lm_eval", "lm-eval"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    lm = HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=batch_size,
        add_bos_token=add_bos_token,
        max_length=max_length,
    )
    with tempfile.TemporaryDirectory(prefix="ngc-tasks-") as folder:
        for config in configs:
            (Path(folder) / f"{config['task']}.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        manager = TaskManager(include_path=folder, include_defaults=False)
        output = evaluator.simple_evaluate(
            model=lm,
            tasks=names,
            task_manager=manager,
            limit=limit,
            log_samples=True,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    return [task_result(source, output) for source in sources]


def _required_score(row: dict[str, Any], source: TaskSource) -> float:
    """The task's headline metric; a missing one is an error, never a score of 0."""
    value = _score(row, source.metric, source.filter)
    if value is None:
        key = f"{source.metric},{source.filter}"
        present = ", ".join(sorted(k for k in row if "," in k)) or "none"
        raise EvaluationError(
            f"lm-evaluation-harness reported no {key!r} for task {source.name} (metrics present: {present})",
            hint="the installed lm-eval may define this task differently; check its version (`pip show lm-eval`)",
        )
    return value


def task_result(source: TaskSource, output: dict[str, Any]) -> TaskResult:
    """One task's result from the harness' ``simple_evaluate`` output."""
    row = output["results"].get(source.name)
    if row is None:
        raise EvaluationError(
            f"lm-evaluation-harness returned no results for task {source.name}",
            hint="check the task's data files and the installed lm-eval version",
        )
    n_samples = output.get("n-samples", {}).get(source.name, {})
    examples = _examples(output.get("samples", {}).get(source.name, []), source)
    return TaskResult(
        task=source.name,
        acc=_required_score(row, source),
        acc_norm=_score(row, "acc_norm", source.filter),
        n=int(n_samples.get("effective", len(examples))),
        acc_stderr=_score(row, f"{source.metric}_stderr", source.filter),
        metric=source.metric if source.filter == "none" else f"{source.metric} ({source.filter})",
        examples=examples,
    )
