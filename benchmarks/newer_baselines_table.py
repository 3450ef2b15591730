"""Gather benchmarks/newer_baselines.sh cells into benchmarks/results/newer_baselines_smollm2.json (and print them).

Each cell: the commands, WikiText-2 test perplexity (and GSM8K's, the second text, where the cell scored it), tokens,
measured ratio removed, MAC ratio, wall times. Also plots perplexity against ratio on both texts
(newer_baselines_smollm2_{wikitext2,gsm8k}.png): each peer's own recipe, svd-llm and basis-sharing from the baseline
table (WikiText-2 only), and NGC's defaults (the cells whose settings are the defaults at each ratio).
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CELLS = RESULTS / "newer_baselines_smollm2"


def cell(label: str) -> dict:
    compress = json.loads((CELLS / f"{label}.compress.json").read_text())
    evaluated = json.loads((CELLS / f"{label}.eval.json").read_text())["ppl"]["wikitext2"]
    wall = json.loads((CELLS / f"{label}.wall.json").read_text())
    method, ratio = label.rsplit("@", 1)
    accounting = compress["result"]["accounting"] if "result" in compress else compress["accounting"]
    command = wall.pop(
        "command",  # cells written before the script recorded its command line had no refinement option
        f"ngc compress smollm2-135m --method {method} --ratio {ratio} --calib-samples 64 --calib-len 512 --out DIR",
    )
    second = CELLS / f"{label}.gsm8k.json"
    extra = {}
    if second.is_file():
        extra["ppl_gsm8k"] = json.loads(second.read_text())["ppl"]["gsm8k"]["ppl"]
    evals = ["ngc eval DIR --ppl wikitext2 --max-windows 16"]
    if extra:
        evals.append("ngc eval DIR --ppl gsm8k --max-windows 16")
    return {
        "commands": [command, *evals],
        "ppl": evaluated["ppl"],
        **extra,
        "tokens": evaluated["tokens"],
        "window_len": evaluated["window_len"],
        "ratio_removed": accounting["ratio_removed"],
        "mac_ratio": accounting["mac_ratio"],
        "dense_modules": len(accounting["dense_modules"]),
        **wall,
    }


REFERENCE_CELLS = ("svd-llm@0.2", "svd-llm@0.4")


def reference(label: str) -> dict:
    """A cell of benchmarks/results/baselines_smollm2.json (compare.py, same calibration and evaluation)."""
    row = json.loads((RESULTS / "baselines_smollm2.json").read_text())["cells"][label]
    return {"ppl": row["ppl"], "tokens": row["tokens"], "source": "benchmarks/results/baselines_smollm2.json"}


#: the cells whose settings are NGC's defaults at each ratio (ngc.fit.methods: the loss rule with ridge 1 below
#: R = 0.5, uniform ranks with ridge 0.1 from 0.5; block refinement throughout)
NGC_DEFAULTS = (
    "ngc+block:loss#sequential-shrink=1@0.2",
    "ngc+block:loss#sequential-shrink=1@0.3",
    "ngc+block:loss#sequential-shrink=1@0.4",
    "ngc+block:loss#alloc-floor=0.5@0.5",
)
PEERS = ("svd-llm-v2", "aa-svd", "zs-svd")


def series(table: dict, baseline: dict, key: str) -> dict[str, list[tuple[float, float]]]:
    """Perplexity (``key``: "ppl" or "ppl_gsm8k") against ratio: each peer's cells (svd-llm and basis-sharing from
    the ``baseline`` table's cells, WikiText-2 only), NGC's defaults."""
    lines: dict[str, list[tuple[float, float]]] = {}
    if key == "ppl":
        for label, row in baseline.items():
            method, ratio = label.rsplit("@", 1)
            if method in ("svd-llm", "basis-sharing"):
                lines.setdefault(method, []).append((float(ratio), row["ppl"]))
    for label, row in table.items():
        method, ratio = label.rsplit("@", 1)
        if method in PEERS and key in row:
            lines.setdefault(method, []).append((float(ratio), row[key]))
    defaults = [(float(label.rsplit("@", 1)[1]), table[label][key]) for label in NGC_DEFAULTS if key in table[label]]
    lines["ngc (defaults)"] = defaults
    return lines


def plot(table: dict) -> None:
    from ngc.reports.plots import metric_vs_ratio

    baseline = json.loads((RESULTS / "baselines_smollm2.json").read_text())
    dense = {
        "ppl": baseline["dense"]["ppl"],
        "ppl_gsm8k": json.loads((RESULTS / "newer_baselines_dense_gsm8k.json").read_text())["ppl"]["gsm8k"]["ppl"],
    }
    for key, text in (("ppl", "wikitext2"), ("ppl_gsm8k", "gsm8k")):
        path = RESULTS / f"newer_baselines_smollm2_{text}.png"
        name = "WikiText-2" if text == "wikitext2" else "GSM8K"
        title = f"SmolLM2-135M, training-free: {name}"
        metric_vs_ratio(
            series(table, baseline["cells"], key), f"{name} test perplexity", title, path, dense[key], log_y=True
        )
        print(f"wrote {path}")


def main() -> None:
    labels = sorted(p.name.removesuffix(".wall.json") for p in CELLS.glob("*.wall.json"))
    table = {label: cell(label) for label in labels}
    record = {
        "settings": {
            "model": "smollm2-135m",
            "calib_samples": 64,
            "calib_len": 512,
            "seed": 0,
            "eval_len": 2048,
            "eval_windows": 16,
            "dtype": "float32",
        },
        "note": "wall times from a 2-core CPU shared with other jobs (OMP_NUM_THREADS=1); not a speed measurement",
        "cells": table,
        # the same protocol's earlier cells, for the directions of cells not re-run here
        "reference": {label: reference(label) for label in REFERENCE_CELLS},
    }
    (RESULTS / "newer_baselines_smollm2.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    plot(table)
    for label, row in table.items():
        second = f"  gsm8k {row['ppl_gsm8k']:8.3f}" if "ppl_gsm8k" in row else ""
        print(
            f"{label:56s} ppl {row['ppl']:9.3f}{second}  R {row['ratio_removed']:.4f}  "
            f"compress {row['compress_seconds']} s"
        )


if __name__ == "__main__":
    main()
