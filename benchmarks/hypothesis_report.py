"""One table and one plot of the per-item relation between dynamics and correctness for several models.

Reads the dynamics.json that `ngc dynamics MODEL --task TASK` wrote for each model; writes OUT/hypothesis.md
and OUT/hypothesis.png.

    python benchmarks/hypothesis_report.py RUN_DENSE RUN_NGC --names dense,ngc-r0.3 --out FOLDER
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ngc.atomic import write_text_atomic
from ngc.dynamics.hypothesis import relation
from ngc.reports.plots import by_correctness


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="folders written by `ngc dynamics --task`")
    parser.add_argument("--names", default=None, help="comma-separated labels (default: the folder names)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    names = args.names.split(",") if args.names else [run.name for run in args.runs]
    payloads = {
        name: json.loads((run / "dynamics.json").read_text()) for name, run in zip(names, args.runs, strict=True)
    }
    task = next(iter(payloads.values()))["data"]["task"]
    lines = [
        f"Per-item dynamics of the {task} prompt vs correctness (point-biserial r with a bootstrap 95 % interval, "
        "two-sided permutation p; stability S = -λ and the driving ratio are means over layers; the last column is "
        "the feature's correlation with the prompt's length in tokens).",
        "",
        "| model | items | accuracy | feature | r | 95 % interval | p | mean (correct) | mean (wrong) | r, length |",
        "| --- | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, payload in payloads.items():
        examples = payload["examples"]
        accuracy = sum(e["correct"] for e in examples) / len(examples)
        tokens = torch.tensor([float(e["tokens"]) for e in examples], dtype=torch.float64)
        correct = [bool(e["correct"]) for e in examples]
        for feature, row in payload["relation"].items():
            values = torch.tensor([float(e[feature]) for e in examples], dtype=torch.float64)
            with_length = float(torch.corrcoef(torch.stack([values, tokens]))[0, 1])  # a confound to keep in mind
            # the same feature with the linear effect of prompt length removed (least-squares residual)
            design = torch.stack([torch.ones_like(tokens), tokens], dim=1)
            residual = values - design @ torch.linalg.lstsq(design, values.unsqueeze(1)).solution.squeeze(1)
            adjusted = relation(f"{feature} | length", residual.tolist(), correct).to_dict()
            for label, r in ((feature, row), (f"{feature}, length removed", adjusted)):
                lines.append(
                    f"| {name} | {r['n']} | {accuracy:.3f} | {label} | {r['r']:+.3f} | "
                    f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] | {r['p_value']:.3f} | "
                    f"{r['mean_correct']:.4f} | {r['mean_wrong']:.4f} | {with_length:+.3f} |"
                )
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "hypothesis.md", "\n".join(lines) + "\n")
    by_correctness(
        {name: payload["examples"] for name, payload in payloads.items()},
        f"{task}: per-item dynamics of the prompt vs correctness",
        args.out / "hypothesis.png",
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
