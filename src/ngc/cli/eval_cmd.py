"""``ngc eval MODEL``: perplexity on named corpora and text files, as a table and optionally JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ngc.cli.options import CacheDir, DataDir, Device
from ngc.data.corpora import CORPORA, Text, load_corpus, load_text_file
from ngc.errors import UsageError


def _check_json_target(path: Path | None) -> None:
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"--json {path} is a folder", hint="give a file name, e.g. --json results/eval.json")
    if not path.parent.exists():
        raise UsageError(f"--json {path}: its folder {path.parent} does not exist", hint=f"mkdir -p {path.parent}")


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
    """Perplexity of MODEL over non-overlapping windows (SPEC §7).

    Examples:

    \b
      ngc eval smollm2-135m --ppl wikitext2
      ngc eval ./my-model --ppl-file notes.txt --ppl-len 512 --max-windows 8 --json out.json
    """
    from ngc.atomic import write_json_atomic
    from ngc.checkpoint.load import load_any as load
    from ngc.eval.perplexity import check_eval_args, perplexity
    from ngc.models.load import parse_dtype
    from ngc.reports.results import eval_payload
    from ngc.reports.tables import perplexity_table, stdout_console

    # Validate everything that needs no model first: flags, data files, output path.
    check_eval_args(ppl_len, max_windows)
    parse_dtype(dtype)
    _check_json_target(json_out)
    files = ppl_file or []
    names = ppl or ([] if files else ["wikitext2"])
    texts: list[Text] = [load_corpus(name, ppl_split, data_dir) for name in names]
    texts += [load_text_file(path) for path in files]

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    console = Console(stderr=True)
    with console.status(f"loading {model} ..."):
        loaded = load(model, dtype=dtype, device=device, cache=cache)
    console.print(f"loaded {model} ({loaded.spec.family}, {loaded.dtype}) in {loaded.load_seconds:.1f} s")
    results = [perplexity(loaded, text, ppl_len, max_windows or None) for text in texts]
    stdout_console().print(perplexity_table(results, title=f"perplexity of {model}"))
    if json_out is not None:
        write_json_atomic(json_out, eval_payload(loaded, results))
        console.print(f"wrote {json_out}")
