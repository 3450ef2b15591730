"""Wall time of the full per-layer dynamics report (`ngc dynamics` defaults: 16 sequences x 256 tokens, 4 probes,
10 Lanczos steps) on SmolLM2-135M, in one fresh process, written to a JSON file.

    NGC_DATA_DIR=../shared/data python benchmarks/dynamics_time.py --out benchmarks/results/dynamics_time_smollm2.json
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

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "ngc", "dynamics", args.model, "--sequences", str(args.sequences)]
        command += ["--length", str(args.length), "--out", str(Path(folder) / "dyn")]
        start = time.perf_counter()
        subprocess.run(command, check=True, env=os.environ | {"NGC_NO_PROGRESS": "1"})
        seconds = time.perf_counter() - start
        layers = len(json.loads((Path(folder) / "dyn" / "dynamics.json").read_text())["layers"])
    result = {
        "model": args.model,
        "sequences": args.sequences,
        "length": args.length,
        "probes": 4,
        "lanczos_steps": 10,
        "layers": layers,
        "wall_seconds": seconds,
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
