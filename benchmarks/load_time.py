"""Time to load each packaged model: first use (GGUF -> float folder, in a fresh cache) and from the cache.

Usage: python benchmarks/load_time.py [--repeats 3] [--out benchmarks/results/load_time.json] [ALIAS ...]
Measurements only; nothing here is asserted by the tests.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from ngc.atomic import write_json_atomic
from ngc.models.load import load_model
from ngc.models.packaged import PACKAGED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("aliases", nargs="*", default=list(PACKAGED))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/load_time.json")
    args = parser.parse_args()
    rows = {}
    for alias in args.aliases:
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            load_model(alias, cache=cache)
            first = time.perf_counter() - start
            cached = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                loaded = load_model(alias, cache=cache)
                cached.append(time.perf_counter() - start)
            params = sum(p.numel() for p in loaded.model.parameters())
        rows[alias] = {
            "first_use_seconds": round(first, 2),
            "cached_load_seconds_median": round(statistics.median(cached), 2),
            "cached_load_seconds": [round(t, 2) for t in cached],
            "parameters": params,
        }
        print(
            f"{alias}: first use {first:.1f} s, from cache {statistics.median(cached):.2f} s "
            f"(median of {args.repeats}), {params:,} parameters"
        )
    write_json_atomic(args.out, {"torch_threads": torch.get_num_threads(), "models": rows})


if __name__ == "__main__":
    main()
