"""Eager and compiled speed of NGC-compressed models next to their dense model, on this CPU (SPEC §7).

One process: the dense model is loaded once, calibration statistics are collected once, and every ratio
compresses a copy of it with NGC. Each ratio is measured eagerly and compiled (``ngc.eval.speed.benchmark``;
the model and the dense reference are compiled alike, decode on a static KV cache, compile time apart), at the
prefill shapes and at each decode shape. Speed does not depend on the calibration size beyond the ranks it picks,
so a small calibration is the default here; it is recorded in the results.

    OMP_NUM_THREADS=1 NGC_DATA_DIR=../shared/data python benchmarks/compiled_speed.py --threads 1 \\
        --out benchmarks/results/compiled_speed_smollm2_cpu.json
    python benchmarks/compiled_speed.py --model tests-tiny --ratios 0.5 --shapes 1x16 --decode 1x8+4 \\
        --calib-samples 4 --calib-len 32 --repeats 1 --out /tmp/compiled_speed.json   # smoke test, seconds
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from ngc.api import calibration_info, collect_statistics, compress
from ngc.config import CompressionConfig
from ngc.data.windows import CalibrationWindows, calibration_windows
from ngc.eval.speed import BenchResult, benchmark, parse_decode, parse_shapes
from ngc.models.load import LoadedModel, load_model

TINY = "tests-tiny"  # a tiny random Llama built in memory, for smoke tests


def load(name: str, device: str = "cpu") -> LoadedModel:
    if name != TINY:
        return load_model(name, device=device)
    from ngc.models.tiny import build_tiny_model

    model = build_tiny_model("llama").to(device).eval()
    return LoadedModel(model=model, tokenizer=None, spec=None, name=name, folder=None, load_seconds=0.0)


def calibration(loaded: LoadedModel, samples: int, length: int, seed: int) -> CalibrationWindows:
    if loaded.tokenizer is None:  # the tiny model: random tokens
        ids = torch.randint(0, 250, (samples, length), generator=torch.Generator().manual_seed(seed))
        return CalibrationWindows(ids, "random tokens", None, seed)
    return calibration_windows(loaded.tokenizer, "wikitext2", samples, length, seed, loaded.bos_token_id)


def rows_of(results: list[BenchResult]) -> dict[str, Any]:
    """The prefill rows of the first result and the decode row of each, with their compile facts."""
    first = results[0]
    return {
        "mode": first.mode,
        "compile_error": next((r.compile_error for r in results if r.compile_error), None),
        "compile_seconds": [r.compile_seconds for r in results],
        "prefill": [row.to_dict() | {"of_limit": row.speedup / row.limit} for row in first.prefill],
        "decode": [r.decode.to_dict() | {"of_limit": r.decode.speedup / r.decode.limit} for r in results],
    }


def summary(label: str, rows: dict[str, Any]) -> str:
    cells = [f"prefill {r['batch']}x{r['len']} {r['speedup']:.2f}/{r['limit']:.2f}" for r in rows["prefill"]]
    cells += [
        f"decode {r['batch']}x{r['prompt']}+{r['len']} {r['speedup']:.2f}/{r['limit']:.2f}" for r in rows["decode"]
    ]
    return f"{label} [{rows['mode']}]: " + ", ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ratios", default="0.3,0.5")
    parser.add_argument("--shapes", default="1x512,4x512")
    parser.add_argument("--decode", default="1x128+64,4x128+64")
    parser.add_argument("--modes", default="eager,compiled")
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--calib-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--note", default="", help="conditions to record with the figures (e.g. a shared machine)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if set(modes) - {"eager", "compiled"}:
        raise SystemExit(f"--modes takes eager and/or compiled, not {args.modes!r}")
    torch.set_num_threads(args.threads)
    shapes = parse_shapes(args.shapes)
    decodes = [parse_decode(text) for text in args.decode.split(",") if text]
    start = time.perf_counter()
    loaded = load(args.model)
    calib = calibration(loaded, args.calib_samples, args.calib_len, args.seed)
    stats = collect_statistics(loaded.model, calib)
    results: dict[str, Any] = {
        "model": args.model,
        "method": "ngc",
        "torch": torch.__version__,
        "device": "cpu",
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "note": args.note,
        "calibration": calibration_info(calib),
        "warmup": args.warmup,
        "repeats": args.repeats,
        "command": "python benchmarks/compiled_speed.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "note"),
        "rows": [],
    }
    for ratio in (float(r) for r in args.ratios.split(",")):
        model = copy.deepcopy(loaded.model)
        compressed = compress(
            model,
            CompressionConfig(method="ngc", ratio=ratio, alloc="uniform", refine="none", sequential_shrink=0.1),
            stats,
        )
        for mode in modes:
            compiled = mode == "compiled"
            runs = [
                benchmark(
                    model, loaded.model, shapes, decodes[0], warmup=args.warmup, repeats=args.repeats, compile=compiled
                )
            ]
            runs += [
                benchmark(model, loaded.model, [], d, warmup=args.warmup, repeats=args.repeats, compile=compiled)
                for d in decodes[1:]
            ]
            row = {
                "ratio": ratio,
                "ratio_removed": compressed.accounting.ratio_removed,
                "mac_ratio": runs[0].mac_ratio,
                "bytes_ratio": runs[0].bytes_ratio,
                "rank_alignment": runs[0].rank_alignment,
            } | rows_of(runs)
            results["rows"].append(row)
            print(summary(f"R={ratio}", row), flush=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")  # rows so far, should a later one fail
            torch._dynamo.reset()  # the next model compiles afresh; nothing of this one is kept
        del model
    results["wall_seconds"] = time.perf_counter() - start
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out} in {results['wall_seconds']:.1f} s", flush=True)


if __name__ == "__main__":
    main()
