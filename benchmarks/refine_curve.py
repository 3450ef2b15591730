"""Perplexity against distillation budget (SPEC §5): every method gets the same refinement, at every ratio.

For each ratio and method the closed form is fitted once (refine none: the budget-0 point); every budget then
distils its own copy of that closed form from scratch (the schedule depends on the budget), against the dense
model, on the refinement data (default: the calibration corpus's split, all of it, with the default held-out
slice), and is evaluated by perplexity on the test split (SPEC §7). Results go to ``--out`` after every cell
(``--resume`` skips cells already there); ``--plot`` draws one panel per ratio. Cells run in separate processes
(each with its own ``--out``) are gathered with ``--merge A.json B.json --out ALL.json``: rows of runs with the
same calibration, refinement data and dense evaluation, each cell once; ``--replot`` only redraws ``--plot``.

    OMP_NUM_THREADS=1 NGC_DATA_DIR=/path/to/data python benchmarks/refine_curve.py \\
        --out benchmarks/results/refine_curve_smollm2.json --plot benchmarks/results/refine_curve_smollm2.png
    python benchmarks/refine_curve.py --model DIR --calib FILE --ppl-data FILE --ppl-len 32 --ppl-windows 2 \\
        --calib-samples 2 --calib-len 32 --budgets 0,128 --methods svd-llm --ratios 0.4 --out /tmp/curve.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from ngc.api import compress
from ngc.atomic import write_json_atomic
from ngc.config import CompressionConfig
from ngc.data.windows import calibration_windows
from ngc.eval.perplexity import perplexity
from ngc.models.load import LoadedModel, load_model
from ngc.refine.data import refinement_data
from ngc.refine.distill import distill
from ngc.refine.stage import plan_distillation


def ppl_text(name: str):
    """The evaluation text: a named corpus' test split, or a whole file."""
    from ngc.data.corpora import CORPORA, load_corpus, load_text_file

    return load_corpus(name, "test") if name in CORPORA else load_text_file(name)


def evaluate(loaded: LoadedModel, model: torch.nn.Module, text, args: argparse.Namespace) -> dict[str, Any]:
    result = perplexity(dataclasses.replace(loaded, model=model), text, args.ppl_len, args.ppl_windows)
    return {"ppl": result.ppl, "tokens": result.tokens, "windows": result.windows, "window_len": result.window_len}


def option_fields(options: str) -> dict[str, Any]:
    """``OPT=V;FLAG;no-FLAG`` (command-line option names; ``,`` also separates them outside ``--methods``) ->
    CompressionConfig fields of their declared types."""
    types = {f.name: f.type for f in dataclasses.fields(CompressionConfig)}
    fields: dict[str, Any] = {}
    for option in options.replace(";", ",").split(","):
        name, _, value = option.partition("=")
        negated = not value and name.startswith("no-")
        key = (name[3:] if negated else name).replace("-", "_")
        if key not in types:
            raise SystemExit(f"unknown option {name!r} in a cell label (CompressionConfig has no field {key!r})")
        kind = str(types[key])
        if not value:
            fields[key] = not negated
        elif kind.startswith("float"):
            fields[key] = float(value)
        elif kind.startswith("int"):
            fields[key] = int(value)
        else:
            fields[key] = value
    return fields


def cell_fields(label: str) -> dict[str, Any]:
    """``METHOD[~TOPOLOGY][+REFINE][:ALLOC][#OPT=V,...]`` (the grammar of newer_baselines.sh) -> CompressionConfig
    fields.

    ``+REFINE`` is the closed form's own refinement (``block``: AA-SVD's recipe); distillation follows it.
    ``#OPT=V`` sets any other field by its option name (``#sequential-shrink=1``, ``#no-sequential``; several
    options inside ``--methods`` are separated by ``;``, as its cells are by ``,``).
    """
    fields: dict[str, Any] = {}
    head = label
    if "#" in head:
        head, options = head.split("#", 1)
        fields |= option_fields(options)
    if ":" in head:
        head, fields["alloc"] = head.split(":", 1)
    if "+" in head:
        head, fields["refine"] = head.split("+", 1)
    if "~" in head:
        head, fields["topology"] = head.split("~", 1)
    fields["method"] = head
    return fields


def closed_form_config(label: str, ratio: float) -> CompressionConfig:
    return CompressionConfig(ratio=ratio, **cell_fields(label))


def refine_config(label: str, ratio: float, budget: int, args: argparse.Namespace) -> CompressionConfig:
    fields = cell_fields(label)
    before = fields.pop("refine", None)
    return CompressionConfig(
        ratio=ratio,
        **fields,
        refine=f"{before}+distill" if before else "distill",
        refine_tokens=budget,
        refine_lr=args.refine_lr,
        refine_batch=args.refine_batch,
        refine_data=args.refine_data,
        refine_heldout=args.refine_heldout,
    )


#: settings every row of one output file shares (a resumed run must use the same)
PROTOCOL = (
    "model", "calib", "calib_samples", "calib_len", "seed", "ppl_data", "ppl_len", "ppl_windows",
    "refine_data", "refine_heldout", "refine_lr", "refine_batch", "device",
)  # fmt: skip


def earlier_run(args: argparse.Namespace) -> dict[str, Any]:
    """What a run to ``--out`` already wrote (nothing unless ``--resume``); refused when its protocol differs."""
    if not (args.resume and args.out.is_file()):
        return {}
    earlier = json.loads(args.out.read_text())
    settings = earlier.get("settings", {})
    differ = [k for k in PROTOCOL if k in settings and settings[k] != getattr(args, k)]
    if differ:
        was = ", ".join(f"--{k.replace('_', '-')} {settings[k]}" for k in differ)
        raise SystemExit(f"{args.out} was written with {was}: resume with those settings, or write to another --out")
    return earlier


def run(args: argparse.Namespace) -> None:
    earlier = earlier_run(args)  # refused before the model is loaded when the protocol differs
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, device=args.device)
    dense = loaded.model.eval()
    text = ppl_text(args.ppl_data)
    calib = calibration_windows(
        loaded.tokenizer, args.calib, args.calib_samples, args.calib_len, args.seed, loaded.bos_token_id
    )
    refinement = refinement_data(loaded.tokenizer, args.refine_data or args.calib, loaded.bos_token_id)
    rows = earlier.get("rows", [])
    done = {(r["method"], r["ratio"], r["budget"]) for r in rows}
    payload: dict[str, Any] = {
        "settings": vars(args) | {"out": str(args.out), "plot": str(args.plot) if args.plot else None},
        "threads": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "torch": torch.get_num_threads()},
        "calibration": {
            "source": calib.source,
            "split": calib.split,
            "n_windows": calib.n_windows,
            "window_len": calib.window_len,
            "seed": calib.seed,
        },
        "refinement": {
            "source": refinement.source,
            "split": refinement.split,
            "tokens": int(refinement.tokens.numel()),
        },
        "dense": earlier.get("dense") or evaluate(loaded, dense, text, args),
        "rows": rows,
    }
    write_json_atomic(args.out, payload)
    for ratio in args.ratios:
        for method in args.methods:
            todo = [b for b in args.budgets if (method, ratio, b) not in done]
            if not todo:
                continue
            start = time.perf_counter()
            closed = copy.deepcopy(dense)
            compress(closed, closed_form_config(method, ratio), calib)
            fit_seconds = time.perf_counter() - start
            for budget in todo:
                row: dict[str, Any] = {"method": method, "ratio": ratio, "budget": budget, "fit_seconds": fit_seconds}
                student = closed
                if budget:
                    student = copy.deepcopy(closed)
                    plan = plan_distillation(
                        refine_config(method, ratio, budget, args), calib.tokens, refinement, args.seed
                    )
                    assert plan is not None
                    row["distill"] = distill(student, dense, plan.data, plan.options).to_dict()
                row |= evaluate(loaded, student, text, args)
                rows.append(row)
                write_json_atomic(args.out, payload)
                print(f"R={ratio} {method} budget {budget}: ppl {row['ppl']:.3f}", flush=True)
    if args.plot:
        plot(payload, args.plot)


def same_record(a: Any, b: Any, rel: float = 1e-4) -> bool:
    """Equal records, floats within ``rel`` (the dense perplexity of two processes differs in the 6th digit)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_record(a[k], b[k], rel) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= rel * max(abs(a), abs(b))
    return a == b


def merge(parts: list[Path], out: Path, plot_to: Path | None) -> None:
    """Rows of ``parts`` added to ``out`` (created from the first part when missing); settings must agree."""
    payload = json.loads(out.read_text()) if out.is_file() else json.loads(parts[0].read_text())
    done = {(r["method"], r["ratio"], r["budget"]) for r in payload["rows"]}
    for part in parts:
        other = json.loads(part.read_text())
        for key in ("calibration", "refinement", "dense"):
            if not same_record(other[key], payload[key]):
                raise SystemExit(f"{part}: its {key} differs from {out}'s; only runs of one protocol merge")
        for row in other["rows"]:
            if (row["method"], row["ratio"], row["budget"]) not in done:
                payload["rows"].append(row)
                done.add((row["method"], row["ratio"], row["budget"]))
    payload.setdefault("merged", []).extend(str(part) for part in parts)
    write_json_atomic(out, payload)
    if plot_to:
        plot(payload, plot_to)


def plot(payload: dict[str, Any], path: Path) -> None:
    from ngc.reports.plots import metric_vs_budget

    panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for row in payload["rows"]:
        panels.setdefault(f"R = {row['ratio']}", {}).setdefault(row["method"], []).append((row["budget"], row["ppl"]))
    dense = payload["dense"]
    title = f"perplexity ({dense['windows']} x {dense['window_len']} tokens) vs distillation budget"
    metric_vs_budget(panels, "distillation tokens", "perplexity", title, path, reference=dense["ppl"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    listed = lambda kind: lambda s: [kind(float(x)) if kind is int else kind(x) for x in s.split(",")]  # noqa: E731
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument(
        "--methods",
        type=listed(str),
        default=["ngc", "svd-llm", "basis-sharing"],
        help="cells METHOD[~TOPOLOGY][+REFINE][:ALLOC], e.g. ngc:zero-sum, aa-svd (its block refinement is its own)",
    )
    parser.add_argument("--ratios", type=listed(float), default=[0.2, 0.4])
    parser.add_argument("--budgets", type=listed(int), default=[0, 100_000, 300_000, 1_000_000], help="tokens")
    parser.add_argument("--calib", default="wikitext2")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--calib-len", type=int, default=512, help="also the distillation window")
    parser.add_argument("--refine-data", default=None, help="default: the calibration corpus's split, all of it")
    parser.add_argument("--refine-heldout", type=int, default=None)
    parser.add_argument("--refine-lr", type=float, default=1e-3)
    parser.add_argument("--refine-batch", type=int, default=1)
    parser.add_argument("--ppl-data", default="wikitext2", help="corpus (its test split) or text file")
    parser.add_argument("--ppl-len", type=int, default=2048)
    parser.add_argument("--ppl-windows", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda: the model, its fits and distillation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--merge", type=Path, nargs="+", default=None, help="gather these runs' rows into --out")
    parser.add_argument("--replot", action="store_true", help="only draw --plot from the rows already in --out")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.replot:
        plot(json.loads(arguments.out.read_text()), arguments.plot)
    elif arguments.merge:
        merge(arguments.merge, arguments.out, arguments.plot)
    else:
        run(arguments)
