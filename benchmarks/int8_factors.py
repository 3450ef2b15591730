"""int8 factors next to float32 factors and the dense model: stored bytes, decode speed and perplexity.

One process: the dense model is loaded once and compressed once with NGC at R (default 0.5; calibration as
``ngc compress`` by default, 32 x 512 WikiText-2 windows); the int8 model is that same compressed model with its
factors made int8 (``ngc.quantize_factors``: torchao's int8 weight-only, one scale per output row), so the two
differ only in how their factors are stored and multiplied. For the dense model and each compressed one:

- stored bytes (``ngc.account``: every distinct tensor once; what a checkpoint's weights take) and their ratio
  to dense;
- decode tokens/s at ``--decode`` (default batch 1, 128-token prompt + 64 greedy steps) against dense float32, in
  each of ``--modes`` (``ngc.eval.speed.benchmark``, the model and dense alternating; ``compiled``: both through
  the same ``torch.compile(fullgraph=True)``, inductor with freezing, decode on a static KV cache; a compile that
  fails falls back to eager and the row says why);
- perplexity on the first ``--ppl-windows`` windows of ``--ppl-len`` tokens of WikiText-2 test.

``--no-speed`` skips the timing (bytes and perplexity only); ``--save DIR`` also writes both checkpoints and
records their weight files' size.

    OMP_NUM_THREADS=1 NGC_DATA_DIR=../shared/data python benchmarks/int8_factors.py --threads 1 \\
        --out benchmarks/results/int8_factors_smollm2_cpu.json
    python benchmarks/int8_factors.py --model tests-tiny --decode 1x8+4 --ppl-len 32 --calib-samples 4 \\
        --calib-len 32 --repeats 1 --warmup 0 --out /tmp/int8_factors.json   # smoke test, seconds
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from compiled_speed import calibration, load  # the sibling script (benchmarks/ is on the path when run)

from ngc.accounting import account
from ngc.api import calibration_info, compress
from ngc.config import CompressionConfig
from ngc.data.windows import tokenize_text
from ngc.eval.perplexity import token_perplexity
from ngc.eval.speed import benchmark, parse_decode
from ngc.models.load import LoadedModel
from ngc.modules.int8 import check_int8_support, quantize_factors


def evaluation_tokens(loaded: LoadedModel, window_len: int, windows: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """The token stream perplexity is measured on, and what it is."""
    if loaded.tokenizer is None:
        ids = torch.randint(0, 250, (window_len * windows + 1,), generator=torch.Generator().manual_seed(1))
        return ids, {"corpus": "random tokens", "split": None}
    from ngc.data.corpora import load_corpus

    text = load_corpus("wikitext2", "test")
    return tokenize_text(loaded.tokenizer, text.text), {"corpus": text.name, "split": text.split}


def perplexity(model: torch.nn.Module, loaded: LoadedModel, tokens: torch.Tensor, args) -> dict[str, Any]:
    bos = loaded.bos_token_id if loaded.tokenizer is not None else None
    with torch.no_grad():
        nll, count, windows = token_perplexity(model, tokens, args.ppl_len, bos, args.ppl_windows, desc="ppl")
    return {"ppl": math.exp(nll / count), "mean_nll": nll / count, "tokens": count, "windows": windows}


def decode_speed(model, dense, decode, mode: str, args) -> dict[str, Any]:
    result = benchmark(model, dense, [], decode, warmup=args.warmup, repeats=args.repeats, compile=mode == "compiled")
    torch._dynamo.reset()  # the next measurement compiles afresh
    assert result.decode is not None
    row = result.decode.to_dict() | {"of_limit": result.decode.speedup / result.decode.limit, "mode": result.mode}
    return row | {"compile_seconds": result.compile_seconds, "compile_error": result.compile_error}


def saved_bytes(model, loaded: LoadedModel, folder: Path) -> dict[str, Any]:
    import ngc

    ngc.save(model, folder, tokenizer=loaded.tokenizer, force=True)
    files = sorted(folder.glob("*.safetensors"))
    manifest = json.loads((folder / "ngc.json").read_text())
    return {
        "folder": str(folder),
        "file_bytes": sum(f.stat().st_size for f in files),
        "tensor_bytes": manifest["tensor_bytes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--decode", default="1x128+64")
    parser.add_argument("--modes", default="eager,compiled")
    parser.add_argument("--no-speed", action="store_true", help="stored bytes and perplexity only")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--calib-len", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ppl-len", type=int, default=2048)
    parser.add_argument("--ppl-windows", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--save", type=Path, default=None, help="also write both checkpoints under this folder")
    parser.add_argument("--note", default="", help="conditions to record with the figures (e.g. a shared machine)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    modes = [] if args.no_speed else [m for m in args.modes.split(",") if m]
    if set(modes) - {"eager", "compiled"}:
        raise SystemExit(f"--modes takes eager and/or compiled, not {args.modes!r}")
    for name in ("torchao", "torch.utils._pytree"):  # import-time notes of torchao's optional kernels
        logging.getLogger(name).setLevel(logging.ERROR)
    check_int8_support(args.device, (torch.float32,))
    import torchao

    torch.set_num_threads(args.threads)
    decode = parse_decode(args.decode)
    start = time.perf_counter()
    loaded = load(args.model, args.device)
    dense = loaded.model
    calib = calibration(loaded, args.calib_samples, args.calib_len, args.seed)
    tokens, corpus = evaluation_tokens(loaded, args.ppl_len, args.ppl_windows)
    float_model = copy.deepcopy(dense)
    compressed = compress(
        float_model,
        CompressionConfig(method="ngc", ratio=args.ratio, alloc="uniform", refine="none", sequential_shrink=0.1),
        calib,
    )
    int8_model = copy.deepcopy(float_model)  # with its own copy of the compression record
    quantize_factors(int8_model)
    dense_bytes = account(dense).stored_bytes
    results: dict[str, Any] = {
        "model": args.model,
        "method": "ngc",
        "ratio": args.ratio,
        "ratio_removed": compressed.accounting.ratio_removed,
        "torch": torch.__version__,
        "torchao": torchao.__version__,
        "device": args.device,
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "note": args.note,
        "calibration": calibration_info(calib),
        "perplexity": corpus | {"window_len": args.ppl_len, "max_windows": args.ppl_windows},
        "decode_shape": args.decode,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "command": " ".join(["python", *map(shlex.quote, sys.argv)]),
        "rows": [],
    }
    models = (("dense", "float32", dense), ("ngc", "float32", float_model), ("ngc", "int8", int8_model))
    for label, factors, model in models:
        row: dict[str, Any] = {"model": label, "factors": factors if label == "ngc" else None}
        row["stored_bytes"] = account(model).stored_bytes
        row["bytes_ratio"] = row["stored_bytes"] / dense_bytes
        row["perplexity"] = perplexity(model, loaded, tokens, args)
        if label == "ngc" and args.save is not None:
            row["checkpoint"] = saved_bytes(model, loaded, args.save / f"ngc-r{args.ratio}-{factors}")
        if label == "ngc":
            row["decode"] = {mode: decode_speed(model, dense, decode, mode, args) for mode in modes}
        results["rows"].append(row)
        speeds = ", ".join(
            f"{mode} {d['tokens_per_s']:.2f} tok/s = {d['speedup']:.2f}x dense ({d['mode']})"
            for mode, d in row.get("decode", {}).items()
        )
        print(
            f"{label} {row['factors'] or ''}: {row['stored_bytes']:,} bytes ({row['bytes_ratio']:.3f} of dense), "
            f"ppl {row['perplexity']['ppl']:.3f}" + (f"; decode {speeds}" if speeds else ""),
            flush=True,
        )
        args.out.write_text(json.dumps(results, indent=2) + "\n")  # rows so far, should a later one fail
    results["wall_seconds"] = time.perf_counter() - start
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out} in {results['wall_seconds']:.1f} s", flush=True)


if __name__ == "__main__":
    main()
