"""Per-block output error of each method, ``tr(E C Eᵀ) / tr(W C Wᵀ)`` with ``E = W − A Bᵀ`` (SPEC §6 diagnosis).

The error each block makes on the calibration inputs, before any compounding through the network: it shows
which weighting of the SVD fits which blocks, independent of how perplexity amplifies errors.

    NGC_DATA_DIR=../shared/data python benchmarks/block_errors.py --out benchmarks/results/block_errors_smollm2.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ngc.api import collect_statistics
from ngc.arch import block_at, role_weights
from ngc.atomic import write_json_atomic
from ngc.data.windows import calibration_windows
from ngc.fit.allocate import uniform_rank
from ngc.fit.closed_form import fit_group
from ngc.fit.methods import METHODS, group_transform
from ngc.models.load import load_model
from ngc.topology.blocks import find_members
from ngc.topology.groups import Group


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", default="svd,fwsvd,asvd,svd-llm")
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--calib-len", type=int, default=512)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    methods = args.methods.split(",")
    loaded = load_model(args.model)
    calib = calibration_windows(loaded.tokenizer, "wikitext2", args.calib_samples, args.calib_len, 0)
    stats = collect_statistics(loaded.model, calib, fisher="fwsvd" in methods)
    rows = []
    for member in find_members(loaded.model):
        W = role_weights(loaded.model, block_at(loaded.model, member.module))[member.role].to(torch.float64)
        C = stats.moments[member.input_key].second
        group = Group((member,))
        rank = uniform_rank(group, args.ratio)
        energy = float(((W @ C) * W).sum())
        errors = {}
        for name in methods:
            fit = fit_group([W], rank, group_transform(METHODS[name], group, stats.moments, stats.fisher))
            E = W - fit.A[0] @ fit.B.T
            errors[name] = float(((E @ C) * E).sum()) / energy
        rows.append({"block": member.id, "rank": rank, "errors": errors})
    totals = {name: sum(row["errors"][name] for row in rows) for name in methods}
    by_role = {
        role: {name: sum(r["errors"][name] for r in rows if r["block"].endswith(f".{role}")) for name in methods}
        for role in dict.fromkeys(row["block"].split(".")[1] for row in rows)
    }
    write_json_atomic(
        args.out, {"settings": vars(args) | {"out": str(args.out)}, "totals": totals, "by_role": by_role, "rows": rows}
    )
    print("sum over blocks:", {k: round(v, 3) for k, v in totals.items()})
    for role, values in by_role.items():
        print(f"  {role}:", {k: round(v, 3) for k, v in values.items()})


if __name__ == "__main__":
    main()
