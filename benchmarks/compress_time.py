"""Compression time and peak memory of ``ngc compress`` (calibration and fitting reported separately).

Each method runs in its own process (``ngc compress ... --json``), so its peak resident memory is its own:

    NGC_DATA_DIR=../shared/data python benchmarks/compress_time.py \
        --out benchmarks/results/compress_time_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ngc.atomic import write_json_atomic


def run(method: str, args: argparse.Namespace, scratch: Path) -> dict:
    report = scratch / f"{method}.json"
    command = [
        sys.executable,
        "-m",
        "ngc",
        "compress",
        args.model,
        "--method",
        method,
        "--ratio",
        str(args.ratio),
        "--calib-samples",
        str(args.calib_samples),
        "--calib-len",
        str(args.calib_len),
        "--out",
        str(scratch / method),
        "--json",
        str(report),
    ]
    start = time.perf_counter()
    process = subprocess.Popen(command, env=os.environ | {"NGC_NO_PROGRESS": "1"})
    _pid, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed")
    result = json.loads(report.read_text())
    return {
        "method": method,
        "ratio": args.ratio,
        "calibration_seconds": result["calibration_seconds"],
        "fit_seconds": result["fit_seconds"],
        "wall_seconds": wall,
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux reports KiB
        "ratio_removed": result["accounting"]["ratio_removed"],
        "checkpoint_bytes": sum(p.stat().st_size for p in (scratch / method).iterdir()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", default="svd-llm,basis-sharing")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--calib-len", type=int, default=512)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        rows = [run(method, args, Path(scratch)) for method in args.methods.split(",")]
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)  # what the child processes use
    write_json_atomic(args.out, {"settings": settings, "threads": threads, "runs": rows})
    for row in rows:
        print(
            f"{row['method']}: calibration {row['calibration_seconds']:.1f} s, fit {row['fit_seconds']:.1f} s, "
            f"wall {row['wall_seconds']:.1f} s, peak RSS {row['peak_rss_bytes'] / 2**20:.0f} MiB"
        )


if __name__ == "__main__":
    main()
