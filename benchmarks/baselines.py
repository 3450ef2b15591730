"""WikiText-2 perplexity of every baseline at several ratios, from one calibration pass (SPEC §6, §7).

Statistics (moments of every compressed input, and Fisher information) are collected once on the dense model
and every (method, ratio) cell is fitted from them, exactly as ``ngc compress`` would from the same windows.
Finished cells are kept in the JSON and skipped on a rerun (delete the file to start over).

    NGC_DATA_DIR=../shared/data python benchmarks/baselines.py \
        --out benchmarks/results/baselines_smollm2.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from ngc.api import collect_statistics, compress
from ngc.atomic import write_json_atomic, write_text_atomic
from ngc.config import CompressionConfig
from ngc.data.corpora import load_corpus
from ngc.data.windows import calibration_windows, tokenize_text
from ngc.eval.perplexity import token_perplexity
from ngc.models.load import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", default="svd,fwsvd,asvd,svd-llm,basis-sharing")
    parser.add_argument("--ratios", default="0.2,0.3,0.4,0.5")
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--calib-len", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-len", type=int, default=2048)
    parser.add_argument("--eval-windows", type=int, default=16, help="first K windows of the test set (0 = all)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    loaded = load_model(args.model)
    bos = loaded.bos_token_id
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "methods", "ratios")}
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
        write_json_atomic(args.out, results)
    print(f"dense ppl {results['dense']['ppl']:.3f}", flush=True)

    calib = calibration_windows(loaded.tokenizer, "wikitext2", args.calib_samples, args.calib_len, args.seed, bos)
    start = time.perf_counter()
    stats = collect_statistics(loaded.model, calib, fisher="fwsvd" in args.methods.split(","))
    results["calibration"] = {
        "source": calib.source,
        "split": calib.split,
        "n_windows": calib.n_windows,
        "window_len": calib.window_len,
        "seed": calib.seed,
        "seconds": time.perf_counter() - start,
    }
    print(f"statistics collected in {results['calibration']['seconds']:.1f} s", flush=True)

    for method in args.methods.split(","):
        for ratio in [float(r) for r in args.ratios.split(",")]:
            key = f"{method}@{ratio}"
            if key in results["cells"]:
                continue
            model = copy.deepcopy(loaded.model)
            result = compress(model, CompressionConfig(method=method, ratio=ratio), stats)
            cell = ppl(model) | {
                "method": method,
                "ratio": ratio,
                "fit_seconds": result.fit_seconds,
                "accounting": result.accounting.to_dict() | {"groups": len(result.accounting.groups)},
                "warnings": result.warnings,
            }
            results["cells"][key] = cell
            write_json_atomic(args.out, results)
            print(
                f"{key}: ppl {cell['ppl']:.3f}  R={result.accounting.ratio_removed:.4f}  "
                f"fit {result.fit_seconds:.1f} s",
                flush=True,
            )
            del model
    write_text_atomic(args.out.with_suffix(".md"), markdown(results))


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
            row.append("" if cell is None else f"{cell['ppl']:.2f}")
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
