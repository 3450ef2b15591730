"""``ngc dynamics MODEL``: per-layer stability, driving ratio and (against a reference) force and departure."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ngc.cli.options import CacheDir, DataDir, input_paths


def dynamics_command(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model or ngc checkpoint to measure.")],
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder for dynamics.json and the plots.")],
    reference: Annotated[
        str | None, typer.Option(metavar="MODEL", help="Dense model to compare with (force ratio, departure).")
    ] = None,
    data: Annotated[str, typer.Option(metavar="NAME|FILE", help="Corpus (validation split) or text file.")] = (
        "wikitext2"
    ),
    task: Annotated[
        str | None,
        typer.Option(
            metavar="TASK",
            help="Measure on the prompts of a multiple-choice task instead (arc_easy, piqa, ...): the first N items "
            "are scored with lm-evaluation-harness and each prompt's stability and driving ratio are related to "
            "whether MODEL answered it correctly (SPEC §8.4).",
        ),
    ] = None,
    sequences: Annotated[int, typer.Option(metavar="N", help="Number of sequences (with --task: items).")] = 16,
    length: Annotated[
        int, typer.Option(metavar="T", help="Tokens per sequence (with --task: at most T, the prompt's end).")
    ] = 256,
    probes: Annotated[int, typer.Option(metavar="P", help="Hutchinson probes per layer and sequence.")] = 4,
    lanczos: Annotated[int, typer.Option(metavar="K", help="Lanczos steps for the top eigenvalue of Sym.")] = 10,
    seed: Annotated[int, typer.Option(metavar="S", help="Seed of the sequences and probes.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing DIR.")] = False,
    data_dir: DataDir = None,
    cache: CacheDir = None,
) -> None:
    """Measure neuronal dynamics per layer (SPEC §8) on N seeded sequences of T tokens.

    Token-time stability: the finite-time Lyapunov exponent of a perturbation of one input position (linearised,
    by forward-mode JVP). Depth decomposition of each layer update: divergence tr(J)/D, the top eigenvalue of
    Sym(J), and the driving ratio |Skew|/|Sym| (Hutchinson probes, JVP and VJP). With --reference: force ratio
    and trajectory departure of MODEL against it. Writes DIR/dynamics.json and DIR/dynamics.png.

    Examples:

    \b
      ngc dynamics smollm2-135m --out dyn-dense
      ngc dynamics out/smol-ngc-30 --reference smollm2-135m --sequences 8 --length 128 --out dyn-ngc
      ngc dynamics smollm2-135m --task arc_easy --sequences 200 --lanczos 0 --out dyn-arc
    """
    from rich.console import Console

    from ngc import settings
    from ngc.atomic import atomic_folder, check_output_folder, write_json_atomic
    from ngc.checkpoint.load import load_any
    from ngc.data.corpora import CORPORA, load_corpus, load_text_file
    from ngc.data.windows import sample_windows, tokenize_text
    from ngc.dynamics.hypothesis import prompt_sequences, relation
    from ngc.dynamics.report import dynamics_per_sequence, summarise
    from ngc.errors import UsageError
    from ngc.eval.tasks import TASKS, check_choice_task, evaluate_tasks, task_files
    from ngc.reports.plots import by_correctness, per_layer

    if sequences < 1 or length < 8:
        raise UsageError(f"need at least 1 sequence of 8 tokens, got {sequences} x {length}")
    if task is not None:
        check_choice_task(task)
    if probes < 1 or lanczos < 0:
        raise UsageError(
            f"--probes {probes} / --lanczos {lanczos}", hint="at least 1 probe; 0 Lanczos steps skips sym_top"
        )
    inputs = input_paths(model, *([reference] if reference else []))
    check_output_folder(out, force, marker="dynamics.json", inputs=inputs)
    text = None
    if task is None:
        text = load_corpus(data, "validation", data_dir) if data in CORPORA else load_text_file(data)
    else:
        task_files(TASKS[task], settings.data_dir(data_dir))
    console = Console(stderr=True)
    loaded = load_any(model, cache=cache)
    ref = load_any(reference, cache=cache) if reference else None
    examples = None
    if text is not None:
        tokens = tokenize_text(loaded.tokenizer, text.text)
        windows = list(sample_windows(tokens, sequences, length, seed, loaded.bos_token_id))
        data_record = {"source": text.name, "split": text.split, "sequences": sequences, "length": length}
    else:
        (scored,) = evaluate_tasks(
            loaded.model,
            loaded.tokenizer,
            [task],
            settings.data_dir(data_dir),
            limit=sequences,
            add_bos_token=loaded.bos_token_id is not None,
            max_length=loaded.context_len,
        )
        examples, windows = prompt_sequences(scored.examples, loaded.tokenizer, loaded.bos_token_id, length)
        data_record = {"task": task, "items": sequences, "used": len(examples), "max_length": length}
        console.print(f"{task}: accuracy {scored.acc:.4f} on {scored.n} items; {len(examples)} prompts measured")
    per_sequence = dynamics_per_sequence(
        loaded.model, windows, ref.model if ref else None, probes=probes, lanczos_steps=lanczos, seed=seed
    )
    layers = summarise(per_sequence)
    payload = {
        "model": model,
        "reference": reference,
        "data": data_record | {"seed": seed},
        "probes": probes,
        "lanczos_steps": lanczos,
        "layers": [row.to_dict() for row in layers],
    }
    if examples is not None:
        payload["examples"] = [
            {
                "doc_id": example.doc_id,
                "correct": example.correct,
                "tokens": dyn.tokens,
                "stability": dyn.stability,
                "driving_ratio": dyn.driving,
            }
            for example, dyn in zip(examples, per_sequence, strict=True)
        ]
        correct = [example.correct for example in examples]
        payload["relation"] = {
            "stability": relation("stability", [d.stability for d in per_sequence], correct).to_dict(),
            "driving_ratio": relation("driving_ratio", [d.driving for d in per_sequence], correct).to_dict(),
        }
    panels = {
        "stability S = -λ": {model: [(r.layer, -r.lyapunov, r.lyapunov_se) for r in layers]},
        "driving ratio |Skew|/|Sym|": {model: [(r.layer, r.driving_ratio, r.driving_ratio_se) for r in layers]},
    }
    if ref is not None:
        panels["force ratio, departure"] = {
            "force ratio": [(r.layer, r.force_ratio, None) for r in layers],
            "departure": [(r.layer, r.departure, None) for r in layers],
        }
    with atomic_folder(out) as tmp:
        write_json_atomic(tmp / "dynamics.json", payload)
        per_layer(panels, f"dynamics of {model}", tmp / "dynamics.png")
        if examples is not None:
            by_correctness(
                {model: payload["examples"]}, f"{task}: per-item dynamics vs correctness", tmp / "hypothesis.png"
            )
    if examples is not None:
        for name, row in payload["relation"].items():
            console.print(
                f"{name}: r = {row['r']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}], p = {row['p_value']:.3f}; "
                f"mean {row['mean_correct']:.4f} (correct) vs {row['mean_wrong']:.4f} (wrong), n = {row['n']}"
            )
    console.print(f"wrote {out / 'dynamics.json'} and the plots in {out}")
