"""Error of the calibration moments accumulated with float32 batch products, against float64 (SPEC §9).

For every compressed input of the model: ``‖C₃₂ − C₆₄‖_F / ‖C₆₄‖_F`` (the products ``XᵀX`` of each batch in
float32, summed in float64, as on a GPU by default), and what it does to the fit: the relative difference of the
SVD-LLM reconstruction ``‖Ŵ₃₂ − Ŵ₆₄‖_F / ‖Ŵ₆₄‖_F`` of each matrix at the given ratio.

    NGC_DATA_DIR=../shared/data python benchmarks/stats_precision.py smollm2-135m --windows 16 --len 512
    python benchmarks/stats_precision.py smollm2-135m --device cuda --batch 8     # on a GPU machine

Writes ``benchmarks/results/stats_precision_<model>_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ngc.data.windows import calibration_text, sample_windows, tokenize_text
from ngc.fit.allocate import uniform_rank
from ngc.fit.closed_form import fit_group
from ngc.fit.methods import get_method, group_transform
from ngc.models.load import load_model
from ngc.pipeline.distributed import World
from ngc.pipeline.fitting import member_weight
from ngc.pipeline.run import PipelineOptions, collect_moments
from ngc.pipeline.source import ModelSource
from ngc.topology.blocks import find_members
from ngc.topology.groups import build_topology

RESULTS = Path(__file__).parent / "results"


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    loaded = load_model(args.model, device=args.device)
    text = calibration_text("wikitext2", None)
    tokens = tokenize_text(loaded.tokenizer, text.text)
    windows = sample_windows(tokens, args.windows, args.len, 0, loaded.bos_token_id)
    members = find_members(loaded.model)
    source = ModelSource(loaded.model, args.device)
    moments, seconds = {}, {}
    for precision in ("float64", "float32"):
        options = PipelineOptions(device=args.device, batch_size=args.batch, precision=precision)
        start = time.perf_counter()
        moments[precision] = collect_moments(source, members, windows, options, World())
        seconds[precision] = time.perf_counter() - start
    exact, fast = moments["float64"], moments["float32"]
    per_input = {key: relative(fast[key].second, exact[key].second) for key in exact}
    method = get_method("svd-llm")
    per_matrix = {}
    for group in build_topology("per-matrix", members):
        rank = uniform_rank(group, args.ratio)
        weights = [member_weight(loaded.model, m) for m in group.members]
        fits = [fit_group(weights, rank, group_transform(method, group, stats, None)) for stats in (exact, fast)]
        rebuilt = [fit.A[0] @ fit.B.T for fit in fits]
        per_matrix[group.id] = relative(rebuilt[1], rebuilt[0])
    payload = {
        "model": args.model,
        "device": args.device,
        "windows": args.windows,
        "window_len": args.len,
        "batch": args.batch,
        "ratio": args.ratio,
        "threads": torch.get_num_threads(),
        "calibration_seconds": seconds,
        "moments_relative_error": {"max": max(per_input.values()), "per_input": per_input},
        "svd_llm_weight_relative_difference": {"max": max(per_matrix.values()), "per_matrix": per_matrix},
    }
    out = args.out or RESULTS / f"stats_precision_{args.model}_{torch.device(args.device).type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"moments: max relative error {payload['moments_relative_error']['max']:.3e} over {len(per_input)} inputs")
    print(f"SVD-LLM factors: max relative difference {payload['svd_llm_weight_relative_difference']['max']:.3e}")
    print(f"calibration seconds: float64 {seconds['float64']:.1f}, float32 {seconds['float32']:.1f}; wrote {out}")


if __name__ == "__main__":
    main()
