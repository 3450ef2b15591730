"""``ngc dynamics MODEL``: per-layer stability, driving ratio and (against a reference) force and departure."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ngc.cli.options import CacheDir, DataDir


def dynamics_command(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model or ngc checkpoint to measure.")],
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder for dynamics.json and the plots.")],
    reference: Annotated[
        str | None, typer.Option(metavar="MODEL", help="Dense model to compare with (force ratio, departure).")
    ] = None,
    data: Annotated[str, typer.Option(metavar="NAME|FILE", help="Corpus (validation split) or text file.")] = (
        "wikitext2"
    ),
    sequences: Annotated[int, typer.Option(metavar="N", help="Number of sequences.")] = 16,
    length: Annotated[int, typer.Option(metavar="T", help="Tokens per sequence.")] = 256,
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
    """
    from rich.console import Console

    from ngc.atomic import atomic_folder, write_json_atomic
    from ngc.checkpoint.load import load_any
    from ngc.checkpoint.save import check_target
    from ngc.data.corpora import CORPORA, load_corpus, load_text_file
    from ngc.data.windows import sample_windows, tokenize_text
    from ngc.dynamics.report import measure_dynamics
    from ngc.errors import UsageError
    from ngc.reports.plots import per_layer

    if sequences < 1 or length < 8:
        raise UsageError(f"need at least 1 sequence of 8 tokens, got {sequences} x {length}")
    check_target(out, force)
    text = load_corpus(data, "validation", data_dir) if data in CORPORA else load_text_file(data)
    console = Console(stderr=True)
    loaded = load_any(model, cache=cache)
    ref = load_any(reference, cache=cache) if reference else None
    tokens = tokenize_text(loaded.tokenizer, text.text)
    windows = sample_windows(tokens, sequences, length, seed, loaded.bos_token_id)
    layers = measure_dynamics(
        loaded.model, windows, ref.model if ref else None, probes=probes, lanczos_steps=lanczos, seed=seed
    )
    payload = {
        "model": model,
        "reference": reference,
        "data": {"source": text.name, "split": text.split, "sequences": sequences, "length": length, "seed": seed},
        "probes": probes,
        "lanczos_steps": lanczos,
        "layers": [row.to_dict() for row in layers],
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
    console.print(f"wrote {out / 'dynamics.json'} and {out / 'dynamics.png'}")
