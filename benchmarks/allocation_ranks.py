"""How auto allocation moves ranks away from uniform (min / mean / max of rank / uniform rank, per group kind).

NGC_DATA_DIR=../shared/data python benchmarks/allocation_ranks.py   # SmolLM2, intra, R = 0.3, 8 x 512 tokens
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from ngc.api import allocate_auto, collect_statistics, plan
from ngc.config import CompressionConfig
from ngc.data.windows import calibration_windows
from ngc.models.load import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--calib-samples", type=int, default=8)
    parser.add_argument("--calib-len", type=int, default=512)
    args = parser.parse_args()
    loaded = load_model(args.model)
    stats = collect_statistics(
        loaded.model, calibration_windows(loaded.tokenizer, "wikitext2", args.calib_samples, args.calib_len, 0)
    )
    for alloc in ("auto", "auto-energy"):
        config = CompressionConfig(
            method="ngc", topology="intra", ratio=args.ratio, alloc=alloc, sequential=False, refine="none"
        )
        method, _members, groups, uniform = plan(loaded.model, config)
        ranks = allocate_auto(loaded.model, method, groups, stats.moments, None, config)
        by_kind: dict[str, list[float]] = defaultdict(list)
        for group in groups:
            by_kind[group.id.split(":")[1]].append(ranks[group.id] / uniform[group.id])
        summary = {k: f"{min(v):.2f} / {sum(v) / len(v):.2f} / {max(v):.2f}" for k, v in by_kind.items()}
        print(f"{alloc}: rank / uniform rank (min / mean / max) {summary}")


if __name__ == "__main__":
    main()
