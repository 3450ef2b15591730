"""Is torchao's int8 weight-only linear faster than float32 on this CPU? Batch-1 products of SmolLM2's shapes.

NGC's factors are small dense matrices (``x @ B``: 576 -> k, ``z @ Aᵀ``: k -> m), so int8 factors can only speed
up decode if one int8 weight-only product of such a shape beats float32. This measures exactly that, eager and
compiled (inductor, freezing), for the shapes of an NGC layer of SmolLM2 at R = 0.5 and a dense MLP matrix.

    OMP_NUM_THREADS=1 python benchmarks/int8_linear_speed.py --threads 1 --out benchmarks/results/int8_linear_cpu.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

# (out, in): a dense MLP matrix of SmolLM2, and factor shapes of its NGC layer at R = 0.5
SHAPES = ((1536, 576), (180, 576), (576, 180), (1536, 288))


def microseconds(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, steps: int) -> float:
    for _ in range(10):
        run(x)
    start = time.perf_counter()
    for _ in range(steps):
        run(x)
    return (time.perf_counter() - start) / steps * 1e6


def int8_copy(linear: nn.Linear) -> nn.Module:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    holder = nn.Sequential(nn.Linear(linear.in_features, linear.out_features, bias=False))
    with torch.no_grad():
        holder[0].weight.copy_(linear.weight)
    quantize_(holder, Int8WeightOnlyConfig())
    return holder.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--note", default="", help="conditions to record with the figures (e.g. a shared machine)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        import torchao
    except ImportError:
        raise SystemExit("torchao is not installed: pip install -c constraints.txt 'ngc[int8]'") from None
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    with torch.no_grad():
        for out_features, in_features in SHAPES:
            dense = nn.Linear(in_features, out_features, bias=False).eval()
            quantized = int8_copy(dense)
            x = torch.randn(args.batch, in_features)
            error = float((quantized(x) - dense(x)).abs().max() / dense(x).abs().max())
            row = {"out": out_features, "in": in_features, "max_relative_error": error}
            for mode in ("eager", "compiled"):
                torch._dynamo.reset()
                wrap = (lambda m: m) if mode == "eager" else (lambda m: torch.compile(m, options={"freezing": True}))
                fp32_us = microseconds(wrap(dense), x, args.steps)
                int8_us = microseconds(wrap(quantized), x, args.steps)
                row[mode] = {"float32_us": fp32_us, "int8_us": int8_us, "int8_speedup": fp32_us / int8_us}
            rows.append(row)
            print(json.dumps(row), flush=True)
    results = {
        "torch": torch.__version__,
        "torchao": torchao.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "steps": args.steps,
        "note": args.note,
        "rows": rows,
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
