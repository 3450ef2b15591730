"""The whole comparison from one spec: methods x ratios x metrics (perplexity, zero-shot tasks, speed), SPEC §7.

A spec is a YAML file (see ``benchmarks/specs/``): the model, one calibration for every cell, the metrics and their
sizes, the ratios, and the cells (a label and ``CompressionConfig`` fields). Statistics are collected once on the
dense model; every cell compresses a copy of it and is measured the same way as the dense row. Results go to
``benchmarks/results/<spec name>/``: ``results.json`` (finished cells are kept and skipped on a rerun),
``results.md`` and three plots (perplexity, mean zero-shot accuracy and prefill speed-up against the ratio).

    NGC_DATA_DIR=../shared/data python benchmarks/harness.py benchmarks/specs/quick.yaml
    NGC_DATA_DIR=../shared/data python benchmarks/harness.py benchmarks/specs/quick.yaml --only ngc@0.4
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ngc.api import calibration_info, collect_statistics, compress, plan
from ngc.atomic import merge_json_atomic, write_text_atomic
from ngc.calib.collect import CalibrationStats
from ngc.config import CompressionConfig, made_with
from ngc.data.corpora import load_corpus
from ngc.data.windows import calibration_windows, tokenize_text
from ngc.errors import UsageError
from ngc.eval.perplexity import token_perplexity
from ngc.eval.speed import benchmark, parse_decode, parse_shapes
from ngc.eval.tasks import evaluate_tasks, parse_tasks
from ngc.models.load import LoadedModel, load_model
from ngc.reports.plots import metric_vs_ratio
from ngc.settings import data_dir

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Spec:
    name: str
    model: str
    ratios: list[float]
    cells: dict[str, dict[str, Any]]
    calibration: dict[str, Any] = field(default_factory=lambda: {"samples": 64, "len": 512, "seed": 0})
    perplexity: dict[str, Any] | None = None  # {"len": 2048, "windows": 16}
    tasks: dict[str, Any] | None = None  # {"names": "arc_easy,piqa", "limit": 200, "batch_size": 8}
    speed: dict[str, Any] | None = None  # {"shapes": "4x512", "decode": "1x128+32", "repeats": 3, "threads": 2}
    # another spec's results folder whose dense row, measured under the same settings, this one reuses
    dense_from: str | None = None

    @classmethod
    def read(cls, path: Path) -> Spec:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise SystemExit(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        spec = cls(**data)
        for label, fields in spec.cells.items():
            CompressionConfig(**fields, ratio=spec.ratios[0])  # validates every field now, not hours later
            if "ratio" in fields:
                raise SystemExit(f"{path}: cell {label} sets ratio; ratios are the spec's 'ratios' list")
        return spec

    def settings(self) -> dict[str, Any]:
        """What makes results comparable: everything but the list of cells and ratios."""
        return {k: getattr(self, k) for k in ("model", "calibration", "perplexity", "tasks", "speed")}


def measure(model: torch.nn.Module, loaded: LoadedModel, spec: Spec, tokens: torch.Tensor | None) -> dict[str, Any]:
    """Every metric of the spec for one model (the dense row and every cell alike)."""
    row: dict[str, Any] = {}
    if spec.perplexity:
        nll, count, windows = token_perplexity(
            model, tokens, spec.perplexity["len"], loaded.bos_token_id, spec.perplexity.get("windows") or None
        )
        row["ppl"] = {"ppl": math.exp(nll / count), "tokens": count, "windows": windows}
    if spec.tasks:
        start = time.perf_counter()
        results = evaluate_tasks(
            model,
            loaded.tokenizer,
            parse_tasks(spec.tasks["names"]),
            data_dir(),
            limit=spec.tasks.get("limit"),
            batch_size=spec.tasks.get("batch_size", 8),
            add_bos_token=loaded.bos_token_id is not None,
            max_length=loaded.context_len,
        )
        row["tasks"] = {r.task: r.to_dict() for r in results}
        row["mean_acc"] = sum(r.acc for r in results) / len(results)
        row["tasks_seconds"] = time.perf_counter() - start
    return row


def measure_speed(model: torch.nn.Module, dense: torch.nn.Module, spec: Spec) -> dict[str, Any]:
    assert spec.speed is not None
    decode = spec.speed.get("decode")
    result = benchmark(
        model,
        dense,
        parse_shapes(spec.speed["shapes"]),
        parse_decode(decode) if decode else None,
        warmup=spec.speed.get("warmup", 1),
        repeats=spec.speed.get("repeats", 3),
    )
    return {
        "threads": result.threads,
        "prefill": [r.to_dict() for r in result.prefill],
        "decode": None if result.decode is None else result.decode.to_dict(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", type=Path)
    parser.add_argument("--only", default=None, help="comma-separated cells to run, e.g. ngc@0.4 (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: results/<spec name>)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (recorded per cell, not a setting)")
    args = parser.parse_args()
    spec = Spec.read(args.spec)
    out = args.out or RESULTS / spec.name
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if results.get("settings", spec.settings()) != spec.settings():
        raise SystemExit(f"{path} was made with other settings {results['settings']}; delete it or match them")
    results["settings"] = spec.settings()
    results.setdefault("cells", {})
    if spec.speed and spec.speed.get("threads"):
        torch.set_num_threads(int(spec.speed["threads"]))

    if "dense" not in results and spec.dense_from:
        results["dense"] = reused_dense(spec, out.parent / spec.dense_from / "results.json")
        results = merge_json_atomic(path, results, "cells")

    loaded = load_model(spec.model, device=args.device)
    tokens = None
    if spec.perplexity:
        test = load_corpus(spec.perplexity.get("corpus", "wikitext2"), spec.perplexity.get("split", "test"))
        tokens = tokenize_text(loaded.tokenizer, test.text)
    if "dense" not in results:
        start = time.perf_counter()
        results["dense"] = measure(loaded.model, loaded, spec, tokens) | {"seconds": time.perf_counter() - start}
        results = merge_json_atomic(path, results, "cells")
    print(f"dense: {summary(results['dense'])}", flush=True)

    wanted = [(label, ratio) for label in spec.cells for ratio in spec.ratios]
    if args.only:
        keep = set(args.only.split(","))
        wanted = [(label, ratio) for label, ratio in wanted if f"{label}@{ratio}" in keep]
    refuse_changed_cells(results["cells"], spec, path)
    pending = [(label, ratio) for label, ratio in wanted if f"{label}@{ratio}" not in results["cells"]]
    for label, ratio in list(pending):  # refusals that need no data are recorded before the statistics pass
        refused = refused_by_plan(loaded, spec, label, ratio, args.device)
        if refused is not None:
            pending.remove((label, ratio))
            results["cells"][f"{label}@{ratio}"] = refused
            results = merge_json_atomic(path, results, "cells")
            print(f"{label}@{ratio}: {summary(refused)}", flush=True)
    if pending:
        c = spec.calibration
        calib = calibration_windows(
            loaded.tokenizer, c.get("source", "wikitext2"), c["samples"], c["len"], c["seed"], loaded.bos_token_id
        )
        start = time.perf_counter()
        stats = collect_statistics(loaded.model, calib, fisher=any(f["method"] == "fwsvd" for f in spec.cells.values()))
        results["calibration"] = calibration_info(calib) | {"seconds": time.perf_counter() - start}
    for label, ratio in pending:
        key = f"{label}@{ratio}"
        results["cells"][key] = run_cell(loaded, spec, label, ratio, stats, tokens, args.device)
        results = merge_json_atomic(path, results, "cells")  # keeps cells a side-by-side run (--only) added
        print(f"{key}: {summary(results['cells'][key])}", flush=True)
    report(results, out)


def reused_dense(spec: Spec, other: Path) -> dict[str, Any]:
    """The dense row of ``other`` (a results.json), which must have been measured under this spec's settings."""
    if not other.is_file():
        raise SystemExit(f"dense_from: {other} does not exist; run that spec first, or remove dense_from")
    measured = json.loads(other.read_text())
    if measured.get("settings") != spec.settings() or "dense" not in measured:
        raise SystemExit(
            f"dense_from: {other} was measured with other settings ({measured.get('settings')}) or has no dense "
            "row; its model, calibration, perplexity, tasks and speed must equal this spec's"
        )
    return measured["dense"] | {"from": str(other.parent.name)}


def refused_by_plan(loaded: LoadedModel, spec: Spec, label: str, ratio: float, device: str) -> dict[str, Any] | None:
    """The cell as refused when its plan alone (shapes, roles, budget) is already refused; else None."""
    config, cell = cell_header(spec, label, ratio, device)
    try:
        plan(loaded.model, config)
    except UsageError as error:
        return cell | {"refused": str(error)}
    return None


def cell_header(spec: Spec, label: str, ratio: float, device: str) -> tuple[CompressionConfig, dict[str, Any]]:
    """One cell's configuration, and the entries every recorded cell starts with (refused or measured)."""
    config = CompressionConfig(**spec.cells[label], ratio=ratio)
    return config, {"label": label, "ratio": ratio, "config": config.to_dict(), "device": device}


def run_cell(
    loaded: LoadedModel,
    spec: Spec,
    label: str,
    ratio: float,
    stats: CalibrationStats,
    tokens: torch.Tensor | None,
    device: str,
) -> dict[str, Any]:
    """Compress a copy of the dense model with one cell's settings and measure it like the dense row.

    A configuration the library refuses (a budget the method's recipe cannot reach, say) is recorded as the cell's
    ``refused`` reason, so one infeasible cell neither stops the run nor is retried by the next one.
    """
    start = time.perf_counter()
    config, cell = cell_header(spec, label, ratio, device)
    model = copy.deepcopy(loaded.model)
    try:
        result = compress(model, config, stats)
    except UsageError as error:
        return cell | {"refused": str(error), "seconds": time.perf_counter() - start}
    measured = measure(model, loaded, spec, tokens)
    if spec.speed:
        measured["speed"] = measure_speed(model, loaded.model, spec)
    return (
        measured
        | cell
        | {
            "accounting": result.accounting.to_dict() | {"groups": len(result.accounting.groups)},
            "calibration_seconds": result.calibration_seconds,
            "fit_seconds": result.fit_seconds,
            "seconds": time.perf_counter() - start,
            "warnings": result.warnings,
        }
    )


def refuse_changed_cells(cells: dict[str, dict[str, Any]], spec: Spec, path: Path) -> None:
    """A label whose settings changed must not reuse the cell made under its old settings."""
    changed = [
        key
        for key, cell in cells.items()
        if cell.get("label") in spec.cells
        and not made_with(cell.get("config", {}), spec.cells[cell["label"]], cell["ratio"])
    ]
    if changed:
        raise SystemExit(
            f"{path}: cell(s) {', '.join(changed)} were made with other settings than the spec now gives their "
            "label; delete them from the file or give the changed settings a new label"
        )


def summary(row: dict[str, Any]) -> str:
    if "refused" in row:
        return f"refused: {row['refused']}"
    parts = []
    if "ppl" in row:
        parts.append(f"ppl {row['ppl']['ppl']:.3f}")
    if "mean_acc" in row:
        parts.append(f"mean acc {row['mean_acc']:.4f}")
    if "speed" in row:
        parts.append("prefill speed-up " + ", ".join(f"{r['speedup']:.2f}" for r in row["speed"]["prefill"]))
    if "accounting" in row:
        parts.append(f"R={row['accounting']['ratio_removed']:.4f}")
    return "  ".join(parts)


def _ppl(value: float) -> str:
    return f"{value:.2f}" if value < 1e4 else f"{value:.2e}"


def _table(labels: list[str], ratios: list[float], value) -> list[str]:
    lines = [
        "| method | " + " | ".join(f"R = {r}" for r in ratios) + " |",
        "| --- | " + " | ".join("---:" for _ in ratios) + " |",
    ]
    for label, cells in labels:
        lines.append(f"| {label} | " + " | ".join(_entry(cells.get(r), value) for r in ratios) + " |")
    return lines


def _entry(cell: dict[str, Any] | None, value) -> str:
    if cell is None:
        return ""
    return "refused" if "refused" in cell else value(cell)


def _calibration(results: dict[str, Any]) -> str:
    """The calibration the cells saw; the spec's request while no cell has collected statistics yet."""
    if "calibration" in results:
        c = results["calibration"]
        return f"{c['n_windows']} x {c['window_len']} tokens of {c['source']} {c['split']}, seed {c['seed']}"
    c = results["settings"]["calibration"]
    return f"{c['samples']} x {c['len']} tokens of {c.get('source', 'wikitext2')}, seed {c['seed']}"


def markdown(results: dict[str, Any]) -> str:
    """Tables of the results: perplexity, every task, mean accuracy, speed-up, accounting."""
    s, dense, cells = results["settings"], results["dense"], results["cells"]
    by_label: dict[str, dict[float, dict]] = {}
    for cell in cells.values():
        by_label.setdefault(cell["label"], {})[cell["ratio"]] = cell
    ratios = sorted({cell["ratio"] for cell in cells.values()})
    dense_row = [("dense", dict.fromkeys(ratios, dense))]
    rows = dense_row + list(by_label.items())
    lines = [f"Model {s['model']}, float32. Calibration: {_calibration(results)}.", ""]
    if "from" in dense:
        lines += [f"The dense row was measured by the spec {dense['from']}, under the same settings.", ""]
    if s["perplexity"]:
        p = dense["ppl"]
        lines += [
            f"WikiText-2 test perplexity, windows of {s['perplexity']['len']} tokens ({p['windows']} windows, "
            f"{p['tokens']:,} predicted tokens):",
            "",
            *_table(rows, ratios, lambda c: _ppl(c["ppl"]["ppl"])),
            "",
        ]
    if s["tasks"]:
        names = list(dense["tasks"])
        limit = s["tasks"].get("limit")
        lines += [
            f"Zero-shot accuracy (lm-evaluation-harness task definitions on the local files; "
            f"{'first ' + str(limit) + ' items of each task' if limit else 'every item'}):",
            "",
            "| method | R | " + " | ".join(names) + " | mean |",
            "| --- | ---: | " + " | ".join("---:" for _ in names) + " | ---: |",
        ]
        for label, by_ratio in [("dense", {0.0: dense})] + list(by_label.items()):
            for ratio, cell in sorted(by_ratio.items()):
                if "refused" in cell:
                    continue
                accs = " | ".join(f"{cell['tasks'][n]['acc']:.4f}" for n in names)
                lines.append(f"| {label} | {ratio} | {accs} | {cell['mean_acc']:.4f} |")
        lines += [""]
    if s["speed"]:
        lines += [
            f"Prefill speed-up over dense at {s['speed']['shapes']} (limit = dense / compressed MACs per token), "
            "decode speed-up (limit = dense / compressed stored bytes):",
            "",
            *_table(
                list(by_label.items()),
                ratios,
                lambda c: (
                    " · ".join(f"{r['speedup']:.2f} / {r['limit']:.2f}" for r in c["speed"]["prefill"])
                    + (
                        f" · decode {c['speed']['decode']['speedup']:.2f} / {c['speed']['decode']['limit']:.2f}"
                        if c["speed"]["decode"]
                        else ""
                    )
                ),
            ),
            "",
        ]
    lines += [
        "Measured ratio removed / MACs per token (compressed / dense) / fit seconds:",
        "",
        *_table(
            list(by_label.items()),
            ratios,
            lambda c: (
                f"{c['accounting']['ratio_removed']:.4f} / {c['accounting']['mac_ratio']:.3f} / {c['fit_seconds']:.1f}"
            ),
        ),
    ]
    refused = [f"- {key}: {cell['refused']}" for key, cell in cells.items() if "refused" in cell]
    if refused:
        lines += ["", "Refused cells (the method's recipe cannot run this configuration):", "", *refused]
    return "\n".join(lines) + "\n"


def report(results: dict[str, Any], out: Path) -> None:
    """results.md and the plots, from results.json alone."""
    write_text_atomic(out / "results.md", markdown(results))
    series: dict[str, dict[str, list[tuple[float, float]]]] = {"ppl": {}, "acc": {}, "speedup": {}}
    for cell in results["cells"].values():
        label, ratio = cell["label"], cell["ratio"]
        if "ppl" in cell:
            series["ppl"].setdefault(label, []).append((ratio, cell["ppl"]["ppl"]))
        if "mean_acc" in cell:
            series["acc"].setdefault(label, []).append((ratio, cell["mean_acc"]))
        if "speed" in cell:
            largest = max(cell["speed"]["prefill"], key=lambda r: r["batch"] * r["len"])
            series["speedup"].setdefault(label, []).append((ratio, largest["speedup"]))
    model, dense = results["settings"]["model"], results["dense"]
    if series["ppl"]:
        metric_vs_ratio(
            series["ppl"],
            "perplexity (log scale)",
            f"{model}: WikiText-2 test",
            out / "ppl_vs_ratio.png",
            reference=dense["ppl"]["ppl"],
            log_y=True,
        )
    if series["acc"]:
        metric_vs_ratio(
            series["acc"],
            "mean zero-shot accuracy",
            f"{model}: zero-shot tasks",
            out / "accuracy_vs_ratio.png",
            reference=dense["mean_acc"],
        )
    if series["speedup"]:
        metric_vs_ratio(
            series["speedup"],
            "prefill speed-up over dense",
            f"{model}: prefill speed",
            out / "speedup_vs_ratio.png",
            reference=1.0,
        )


if __name__ == "__main__":
    main()
