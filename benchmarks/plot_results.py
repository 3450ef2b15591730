"""Perplexity vs ratio, one line per method, from one or more results JSON files of benchmarks/compare.py.

    python benchmarks/plot_results.py benchmarks/results/baselines_smollm2.json benchmarks/results/ngc_smollm2.json \
        benchmarks/results/ablation_smollm2.json --rename intra+sequential-shrink-0.1=ngc \
        --out benchmarks/results/ppl_vs_ratio_smollm2.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ngc.reports.plots import metric_vs_ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", default="svd-llm,basis-sharing,ngc", help="methods plotted (after --rename)")
    parser.add_argument(
        "--rename",
        action="append",
        default=[],
        metavar="LABEL=NAME",
        help="plot a cell label under another name (an ablation cell that is the default setting)",
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    rename = dict(item.split("=", 1) for item in args.rename)
    series: dict[str, list[tuple[float, float]]] = {}
    dense = None
    for path in args.results:
        results = json.loads(path.read_text())
        dense = results["dense"]["ppl"]
        for cell in results["cells"].values():
            name = rename.get(cell["method"], cell["method"])
            if name in only:
                series.setdefault(name, []).append((cell["ratio"], cell["ppl"]))
    metric_vs_ratio(series, "WikiText-2 perplexity", "SmolLM2-135M, training-free", args.out, dense, log_y=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
