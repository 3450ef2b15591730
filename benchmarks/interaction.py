"""Does the non-bilinear interaction (SPEC §1) fit better than the bilinear one at equal stored parameters?

For a sample of SmolLM2 blocks, the closed-form bilinear fit at the uniform rank of ratio R is compared with the
trained non-bilinear fit ``gain·tanh(A Mᵀ + c) tanh(B Mᵀ + c)ᵀ`` whose stored parameters (states, metric,
offset, gain) do not exceed the bilinear ones, on the normalised output error ``tr(E C Eᵀ)/tr(W C Wᵀ)``.

    NGC_DATA_DIR=../shared/data python benchmarks/interaction.py --out benchmarks/results/interaction_smollm2.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ngc.api import collect_statistics
from ngc.arch import block_at, role_weights
from ngc.atomic import write_json_atomic, write_text_atomic
from ngc.data.windows import calibration_windows
from ngc.fit.allocate import uniform_rank
from ngc.fit.closed_form import fit_group
from ngc.fit.interaction import fit_interaction, interaction_params
from ngc.fit.whiten import whitening
from ngc.models.load import load_model
from ngc.topology.blocks import find_members
from ngc.topology.groups import Group


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--layers", default="0,10,20,29")
    parser.add_argument("--roles", default="q,o,up,down")
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--calib-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    loaded = load_model(args.model)
    calib = calibration_windows(loaded.tokenizer, "wikitext2", args.calib_samples, args.calib_len, 0)
    layers = {int(x) for x in args.layers.split(",")}
    roles = args.roles.split(",")
    members = [m for m in find_members(loaded.model) if m.layer in layers and m.role in roles]
    stats = collect_statistics(loaded.model, calib)
    rows = []
    for member in members:
        W = role_weights(loaded.model, block_at(loaded.model, member.module))[member.role].to(torch.float64)
        C = stats.moments[member.input_key].second
        transform = whitening(C)
        k = uniform_rank(Group((member,)), args.ratio)
        budget = k * (member.m + member.n)
        bilinear = fit_group([W], k, transform)
        energy = float(((W @ C) * W).sum())
        row = {
            "block": member.id,
            "m": member.m,
            "n": member.n,
            "bilinear_rank": k,
            "bilinear_params": budget,
            "bilinear_loss": bilinear.loss / energy,
            "variants": [],
        }
        for k_out in (k, int(1.5 * k)):
            k_in = (budget - k_out - 1) // (member.m + member.n + k_out)
            if k_in < 1:
                continue
            start = time.perf_counter()
            fit = fit_interaction(W, C, transform, k_in, k_out, steps=args.steps)
            assert fit.stored_params == interaction_params(member.m, member.n, k_in, k_out, False) <= budget
            row["variants"].append(
                {
                    "k": k_in,
                    "k_out": k_out,
                    "params": fit.stored_params,
                    "loss": fit.loss,
                    "seconds": time.perf_counter() - start,
                }
            )
        rows.append(row)
        best = min(v["loss"] for v in row["variants"])
        print(f"{member.id}: bilinear {row['bilinear_loss']:.4f}, non-bilinear best {best:.4f}", flush=True)
    write_json_atomic(args.out, {"settings": vars(args) | {"out": str(args.out)}, "rows": rows})
    lines = [
        f"Normalised output error at equal stored parameters, {args.model}, R = {args.ratio} "
        f"(calibration {args.calib_samples} x {args.calib_len}, {args.steps} Adam steps).",
        "",
        "| block | bilinear (k) | non-bilinear k'=k | non-bilinear k'=1.5k |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        cells = [f"{v['loss']:.4f} (k={v['k']})" for v in row["variants"]]
        lines.append(
            f"| {row['block']} | {row['bilinear_loss']:.4f} ({row['bilinear_rank']}) | " + " | ".join(cells) + " |"
        )
    write_text_atomic(args.out.with_suffix(".md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
