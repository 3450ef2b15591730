"""WikiText-2 perplexity of compression settings at several ratios, from one calibration set (SPEC §6, §7).

A cell is a label and CompressionConfig fields: ``--cell "ngc-intra=method=ngc,topology=intra"``; the default
cells are the five baselines. Statistics (moments of every compressed input, Fisher information) are collected
once on the dense model and shared by every cell that can use them; cells with the sequential update or
distillation stream the same windows again. Finished cells are kept in the JSON and skipped on a rerun.

    NGC_DATA_DIR=../shared/data python benchmarks/compare.py --out benchmarks/results/baselines_smollm2.json
    NGC_DATA_DIR=../shared/data python benchmarks/compare.py --ratios 0.3 \
        --cell "intra=method=ngc,topology=intra" --cell "intra+auto=method=ngc,topology=intra,alloc=auto" \
        --out benchmarks/results/ablation_smollm2.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from ngc.api import collect_statistics, compress
from ngc.atomic import merge_json_atomic, write_text_atomic
from ngc.config import CompressionConfig, made_with
from ngc.data.corpora import load_corpus
from ngc.data.windows import calibration_windows, tokenize_text
from ngc.eval.perplexity import token_perplexity
from ngc.models.load import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument(
        "--cell",
        action="append",
        default=None,
        metavar="LABEL=FIELD=VALUE,...",
        help="a setting to compare (repeatable); default: the five baselines",
    )
    parser.add_argument("--ratios", default="0.2,0.3,0.4,0.5")
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--calib-len", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-len", type=int, default=2048)
    parser.add_argument("--eval-windows", type=int, default=16, help="first K windows of the test set (0 = all)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (recorded, not a setting)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    loaded = load_model(args.model, device=args.device)
    bos = loaded.bos_token_id
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "cell", "ratios", "device")}
    cells = [parse_cell(text) for text in (args.cell or DEFAULT_CELLS)]
    if results.get("settings", settings) != settings:
        raise SystemExit(f"{args.out} was made with other settings {results['settings']}; delete it or match them")
    results["settings"] = settings
    results.setdefault("cells", {})

    test = load_corpus("wikitext2", "test")
    tokens = tokenize_text(loaded.tokenizer, test.text)

    def ppl(model: torch.nn.Module) -> dict:
        nll, count, windows = token_perplexity(model, tokens, args.eval_len, bos, args.eval_windows or None)
        return {"ppl": float(torch.tensor(nll / count).exp()), "tokens": count, "windows": windows}

    if "dense" not in results:
        results["dense"] = ppl(loaded.model)
        results = merge_json_atomic(args.out, results, "cells")
    print(f"dense ppl {results['dense']['ppl']:.3f}", flush=True)

    calib = calibration_windows(loaded.tokenizer, "wikitext2", args.calib_samples, args.calib_len, args.seed, bos)
    start = time.perf_counter()
    stats = collect_statistics(loaded.model, calib, fisher=any(c["method"] == "fwsvd" for _, c in cells))
    results["calibration"] = {
        "source": calib.source,
        "split": calib.split,
        "n_windows": calib.n_windows,
        "window_len": calib.window_len,
        "seed": calib.seed,
        "seconds": time.perf_counter() - start,
    }
    print(f"statistics collected in {results['calibration']['seconds']:.1f} s", flush=True)

    for label, fields in cells:
        ratios = fields.pop("ratios", None) or [float(r) for r in args.ratios.split(",")]
        for ratio in ratios:
            key = f"{label}@{ratio}"
            if key in results["cells"]:
                if not made_with(results["cells"][key].get("config", {}), fields, ratio):
                    raise SystemExit(
                        f"{args.out}: cell {key} was made with other settings than --cell now gives {label}; "
                        "delete it from the file or give the changed settings a new label"
                    )
                continue
            model = copy.deepcopy(loaded.model)
            config = CompressionConfig(**fields, ratio=ratio)
            result = compress(model, config, stats)
            cell = ppl(model) | {
                "method": label,
                "config": config.to_dict(),
                "ratio": ratio,
                "calibration_seconds": result.calibration_seconds,
                "fit_seconds": result.fit_seconds,
                "accounting": result.accounting.to_dict() | {"groups": len(result.accounting.groups)},
                "warnings": result.warnings,
                "device": str(loaded.model.device),
            }
            results["cells"][key] = cell
            results = merge_json_atomic(args.out, results, "cells")  # keeps cells a side-by-side run added
            print(
                f"{key}: ppl {cell['ppl']:.3f}  R={result.accounting.ratio_removed:.4f}  "
                f"fit {result.fit_seconds:.1f} s",
                flush=True,
            )
            del model
    write_text_atomic(args.out.with_suffix(".md"), markdown(results))


def rewrite_markdown(path: Path) -> None:
    """Regenerate the markdown table of a results JSON (e.g. after a format change)."""
    write_text_atomic(path.with_suffix(".md"), markdown(json.loads(path.read_text())))


DEFAULT_CELLS = [f"{m}=method={m}" for m in ("svd", "fwsvd", "asvd", "svd-llm", "basis-sharing")]
_BOOL = {"true": True, "false": False}


def parse_cell(text: str) -> tuple[str, dict]:
    """``"label=field=value,field=value"`` -> (label, CompressionConfig fields); roles are written ``q+k+v``;
    ``ratios=0.2+0.3`` limits the cell to those ratios."""
    label, _, rest = text.partition("=")
    fields: dict = {}
    for item in filter(None, rest.split(",")):
        name, _, value = item.partition("=")
        if name == "ratios":  # this cell only at these ratios: ratios=0.2+0.3
            fields[name] = [float(r) for r in value.split("+")]
            continue
        default = getattr(CompressionConfig(), name)
        kind = str if default is None else type(default)
        if kind is tuple:  # roles: q+k+v
            fields[name] = tuple(value.split("+"))
        else:
            fields[name] = _BOOL[value.lower()] if kind is bool else kind(value)
    return label, fields


def _ppl(value: float) -> str:
    return f"{value:.2f}" if value < 1e4 else f"{value:.2e}"


def markdown(results: dict) -> str:
    s = results["settings"]
    cells = results["cells"]
    methods = list(dict.fromkeys(c["method"] for c in cells.values()))
    ratios = sorted({c["ratio"] for c in cells.values()})
    c = results["calibration"]
    lines = [
        f"WikiText-2 test perplexity, {s['model']}, float32, windows of {s['eval_len']} tokens "
        f"({'all' if not s['eval_windows'] else 'first ' + str(s['eval_windows'])} windows, "
        f"{results['dense']['tokens']:,} predicted tokens). Calibration: {c['n_windows']} x {c['window_len']} "
        f"tokens of WikiText-2 {c['split']}, seed {c['seed']}. Dense: {results['dense']['ppl']:.3f}.",
        "",
        "| method | " + " | ".join(f"R = {r}" for r in ratios) + " |",
        "| --- | " + " | ".join("---:" for _ in ratios) + " |",
    ]
    for method in methods:
        row = []
        for r in ratios:
            cell = cells.get(f"{method}@{r}")
            row.append("" if cell is None else _ppl(cell["ppl"]))
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    lines += [
        "",
        "Measured ratio removed / MACs per token (compressed / dense) / fit seconds:",
        "",
        "| method | " + " | ".join(f"R = {r}" for r in ratios) + " |",
        "| --- | " + " | ".join("---" for _ in ratios) + " |",
    ]
    for method in methods:
        row = []
        for r in ratios:
            cell = cells.get(f"{method}@{r}")
            if cell is None:
                row.append("")
                continue
            acc = cell["accounting"]
            row.append(f"{acc['ratio_removed']:.4f} / {acc['mac_ratio']:.3f} / {cell['fit_seconds']:.1f}")
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
