"""``ngc eval MODEL``: perplexity on named corpora and text files, zero-shot tasks, as tables and optionally JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ngc import settings
from ngc.cli.options import CacheDir, DataDir, Device
from ngc.data.corpora import CORPORA, Text, load_corpus, load_text_file
from ngc.errors import UsageError


def _check_json_target(path: Path | None, flag: str = "--json") -> None:
    from ngc.atomic import check_output_file

    check_output_file(path, flag)


def eval_command(
    model: Annotated[
        str,
        typer.Argument(
            metavar="MODEL", help="Packaged alias, model folder, ngc checkpoint, .gguf file, or hub id (online only)."
        ),
    ],
    ppl: Annotated[
        list[str] | None,
        typer.Option(
            "--ppl",
            metavar="NAME",
            help=f"Named corpus for perplexity; repeatable. Known: {', '.join(CORPORA)}. "
            "Default: wikitext2 when no --ppl-file is given.",
        ),
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option(
            "--tasks",
            metavar="T1,T2",
            help="Zero-shot tasks through lm-evaluation-harness, read from the data directory: arc_easy, "
            "arc_challenge, piqa, hellaswag, winogrande, openbookqa, boolq, gsm8k; 'zero-shot' = all but gsm8k; "
            "'all'. With --tasks and no --ppl, perplexity is skipped.",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(metavar="N", help="Score only the first N items of each task (GSM8K is slow).")
    ] = None,
    batch_size: Annotated[int, typer.Option(metavar="B", help="Batch size of the task requests.")] = 8,
    samples: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Also write every scored item (task, doc_id, correct, prompt, gold) as JSON lines to FILE.",
        ),
    ] = None,
    ppl_file: Annotated[
        list[Path] | None,
        typer.Option("--ppl-file", metavar="FILE", help="UTF-8 text file for perplexity; repeatable."),
    ] = None,
    ppl_split: Annotated[str, typer.Option(metavar="SPLIT", help="Split of the named corpora.")] = "test",
    ppl_len: Annotated[
        int, typer.Option(metavar="L", help="Window length L in tokens (capped by the model's context).")
    ] = 2048,
    max_windows: Annotated[int, typer.Option(metavar="K", help="Evaluate only the first K windows (0 = all).")] = 0,
    json_out: Annotated[
        Path | None, typer.Option("--json", metavar="OUT", help="Also write the results as JSON to this file.")
    ] = None,
    dtype: Annotated[str, typer.Option(metavar="DTYPE", help="float32, bfloat16 or float16.")] = "float32",
    device: Device = "cpu",
    data_dir: DataDir = None,
    cache: CacheDir = None,
) -> None:
    """Perplexity of MODEL over non-overlapping windows, and zero-shot task accuracy (SPEC §7).

    Examples:

    \b
      ngc eval smollm2-135m --ppl wikitext2
      ngc eval ./my-model --ppl-file notes.txt --ppl-len 512 --max-windows 8 --json out.json
      ngc eval ./ngc-demo --tasks arc_easy,piqa --limit 200 --json tasks.json
      ngc eval smollm2-135m --ppl wikitext2 --tasks zero-shot --json all.json
    """
    from ngc.atomic import write_json_atomic, write_text_atomic
    from ngc.checkpoint.load import load_any as load
    from ngc.eval.perplexity import check_eval_args, perplexity
    from ngc.eval.tasks import TASKS, check_limit, evaluate_tasks, parse_tasks, task_files
    from ngc.models.load import parse_dtype
    from ngc.reports.results import eval_payload, examples_jsonl
    from ngc.reports.tables import perplexity_table, stdout_console, tasks_table

    # Validate everything that needs no model first: flags, data files, output path.
    check_eval_args(ppl_len, max_windows)
    parse_dtype(dtype, "--dtype")
    _check_json_target(json_out)
    _check_json_target(samples, "--samples")
    files = ppl_file or []
    names = ppl or ([] if files or tasks else ["wikitext2"])
    texts: list[Text] = [load_corpus(name, ppl_split, data_dir) for name in names]
    texts += [load_text_file(path) for path in files]
    task_names = parse_tasks(tasks) if tasks else []
    root = settings.data_dir(data_dir)
    for name in task_names:
        task_files(TASKS[name], root)
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size} must be at least 1", hint="e.g. --batch-size 8")
    check_limit(limit)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    console = Console(stderr=True)
    with console.status(f"loading {model} ..."):
        loaded = load(model, dtype=dtype, device=device, cache=cache)
    console.print(f"loaded {model} ({loaded.spec.family}, {loaded.dtype}) in {loaded.load_seconds:.1f} s")
    results = [perplexity(loaded, text, ppl_len, max_windows or None) for text in texts]
    if results:
        stdout_console().print(perplexity_table(results, title=f"perplexity of {model}"))
    scores = []
    if task_names:
        scores = evaluate_tasks(
            loaded.model,
            loaded.tokenizer,
            task_names,
            root,
            limit=limit,
            batch_size=batch_size,
            add_bos_token=loaded.bos_token_id is not None,
            max_length=loaded.context_len,
        )
        stdout_console().print(tasks_table(scores, title=f"zero-shot tasks of {model}"))
    if samples is not None:
        write_text_atomic(samples, examples_jsonl(scores))
        console.print(f"wrote {samples}")
    if json_out is not None:
        write_json_atomic(json_out, eval_payload(loaded, results, scores))
        console.print(f"wrote {json_out}")
