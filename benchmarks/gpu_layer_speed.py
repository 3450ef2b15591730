"""Speed of a Llama-7B-shaped decoder stack with random weights: dense against factorized, on one device.

The factorized models have the structure of a real compression at each ratio (per-matrix as SVD-LLM keeps it,
and NGC's default intra groups: one basis for q+k+v and one for gate+up per layer), filled with random factors:
speed does not depend on the values. Both models run in the same process with the same dtype; runs alternate
(``ngc.eval.speed.benchmark``). Peak memory is the CUDA peak allocation during one prefill, weights included.

    python benchmarks/gpu_layer_speed.py --out gpu_speed.json                 # on a GPU, bf16, 32 layers
    python benchmarks/gpu_layer_speed.py --device cpu --dtype float32 --preset tiny --out /tmp/s.json  # smoke
    python benchmarks/gpu_layer_speed.py --compile --ratios 0.3,0.5 --rank-multiple 64 --decode 1x512+32,16x512+32 \
        --out gpu_speed_compiled.json    # both models compiled alike (CUDA graphs, static KV cache)
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ngc.accounting import account
from ngc.api import plan
from ngc.config import CompressionConfig
from ngc.eval.speed import benchmark, cuda_peak_bytes, parse_decode, parse_shapes
from ngc.modules.swap import factorize

PRESETS = {
    # Llama-2-7B: hidden 4096, MLP 11008, 32 heads without GQA, 32 layers, vocabulary 32000
    "llama-7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, "vocab_size": 32000},
    "tiny": {"hidden_size": 128, "intermediate_size": 344, "num_attention_heads": 4, "vocab_size": 512},
}


def build(preset: str, layers: int, dtype: torch.dtype, device: str) -> LlamaForCausalLM:
    shape = PRESETS[preset]
    config = LlamaConfig(
        **shape,
        num_key_value_heads=shape["num_attention_heads"],
        num_hidden_layers=layers,
        max_position_embeddings=4096,
    )
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


def factorized_copy(dense: LlamaForCausalLM, method: str, ratio: float, multiple: int = 1) -> LlamaForCausalLM:
    """A copy with the factorized structure of ``method`` at ``ratio``; ranks rounded down to ``multiple``."""
    model = copy.deepcopy(dense)
    _, _, groups, ranks = plan(model, CompressionConfig(method=method, ratio=ratio, rank_multiple=multiple))
    factorize(model, groups, ranks)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".A." in name or name.endswith(".B"):  # the new factors: small random values
                parameter.normal_(0.0, 0.02)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="llama-7b")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--methods", default="svd-llm,ngc")
    parser.add_argument("--ratios", default="0.2,0.3,0.4,0.5")
    parser.add_argument("--shapes", default="1x2048,8x512,16x2048")
    parser.add_argument("--decode", default="1x512+32,16x512+32")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rank-multiple", type=int, default=1, help="round every rank down to a multiple of this")
    parser.add_argument("--compile", action="store_true", help="compile the model and the dense reference alike")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    start = time.perf_counter()
    dense = build(args.preset, args.layers, dtype, args.device)
    shapes = parse_shapes(args.shapes)
    decodes = [parse_decode(text) for text in args.decode.split(",") if text]
    largest = max(shapes, key=lambda s: s.batch * s.length)
    cuda = args.device.startswith("cuda")
    results = {
        "device": torch.cuda.get_device_name() if cuda else args.device,
        "torch": torch.__version__,
        "dtype": args.dtype,
        "preset": args.preset,
        "layers": args.layers,
        "dense_params": sum(p.numel() for p in dense.parameters()),
        "dense_peak_memory_bytes": cuda_peak_bytes(dense, largest) if cuda else None,
        "rank_multiple": args.rank_multiple,
        "compile_requested": args.compile,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "rows": [],
    }
    print(f"built {results['dense_params']:,} parameters in {time.perf_counter() - start:.1f} s", flush=True)
    for method in args.methods.split(","):
        for ratio in (float(r) for r in args.ratios.split(",")):
            model = factorized_copy(dense, method, ratio, args.rank_multiple)
            timing = {"warmup": args.warmup, "repeats": args.repeats, "compile": args.compile}
            runs = [benchmark(model, dense, shapes, None, **timing)]
            runs += [benchmark(model, dense, [], d, **timing) for d in decodes]
            accounting = account(model)
            row = {
                "method": method,
                "ratio": ratio,
                "ratio_removed": accounting.ratio_removed,
                "mac_ratio": runs[0].mac_ratio,
                "bytes_ratio": runs[0].bytes_ratio,
                "prefill": [r.to_dict() for r in runs[0].prefill],
                "decode": [run.decode.to_dict() for run in runs[1:]],
                "peak_memory_bytes": cuda_peak_bytes(model, largest) if cuda else None,
                "mode": "compiled" if all(r.compiled for r in runs) else "eager",
                "compile_seconds": [r.compile_seconds for r in runs],
                "compile_error": next((r.compile_error for r in runs if r.compile_error), None),
            }
            results["rows"].append(row)
            print(
                f"{method} R={ratio}: prefill "
                + ", ".join(f"{r['batch']}x{r['len']} {r['speedup']:.2f}/{r['limit']:.2f}" for r in row["prefill"])
                + "; decode "
                + ", ".join(
                    f"{r['batch']}x{r['prompt']}+{r['len']} {r['speedup']:.2f}/{r['limit']:.2f}" for r in row["decode"]
                ),
                flush=True,
            )
            del model
            torch._dynamo.reset()
            if cuda:
                torch.cuda.empty_cache()
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
