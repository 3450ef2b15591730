#!/usr/bin/env bash
# What each NGC ingredient buys at R = 0.3 on SmolLM2-135M (issue: ablation), with the calibration and evaluation
# of benchmarks/results/baselines_smollm2.json (64 x 512 calibration tokens of WikiText-2 validation, seed 0;
# first 16 windows of 2048 tokens of WikiText-2 test). The exact objective matters only where members read
# different inputs, so its row is on intra-cross-2. The second command adds refinement to the default (local output
# MSE, then whole-model distillation with the budget of the refined main-table rows). Resumable: finished cells are skipped.
# Usage: NGC_DATA_DIR=/path/to/data benchmarks/ngc_ablation.sh [extra compare.py arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
$PYTHON benchmarks/compare.py --ratios 0.3 --out benchmarks/results/ablation_smollm2.json \
  --cell "intra=method=ngc,topology=intra,alloc=uniform,sequential=false,refine=none" \
  --cell "intra-cross-2=method=ngc,topology=intra-cross-2,alloc=uniform,sequential=false,refine=none" \
  --cell "intra+auto-alloc=method=ngc,topology=intra,alloc=auto,sequential=false,refine=none" \
  --cell "auto-topology=method=ngc,topology=auto,alloc=uniform,sequential=false,refine=none" \
  --cell "per-matrix+sequential=method=ngc,topology=per-matrix,alloc=uniform,sequential=true,sequential_shrink=0,refine=none" \
  --cell "intra+sequential-shrink-0.1=method=ngc,topology=intra,alloc=uniform,sequential=true,sequential_shrink=0.1,refine=none" \
  --cell "intra+auto-alloc-floor-0.5=method=ngc,topology=intra,alloc=auto,alloc_floor=0.5,sequential=false,refine=none" \
  --cell "intra+auto-energy=method=ngc,topology=intra,alloc=auto-energy,sequential=false,refine=none" \
  --cell "per-matrix+sequential-shrink-0.1=method=ngc,topology=per-matrix,alloc=uniform,sequential=true,sequential_shrink=0.1,refine=none" \
  --cell "intra+sequential-shrink-0.03=method=ngc,topology=intra,alloc=uniform,sequential=true,sequential_shrink=0.03,refine=none" \
  --cell "intra+sequential-shrink-0.3=method=ngc,topology=intra,alloc=uniform,sequential=true,sequential_shrink=0.3,refine=none" \
  --cell "intra-cross-2+exact=method=ngc,topology=intra-cross-2,alloc=uniform,sequential=false,exact=true,refine=none" \
  "$@"
# Refinement on top of the default, in its own file so it can run beside the rows above.
$PYTHON benchmarks/compare.py --ratios 0.3 --out benchmarks/results/ablation_refined_smollm2.json \
  --cell "intra+sequential-shrink-0.1+local-50=method=ngc,topology=intra,alloc=uniform,sequential=true,sequential_shrink=0.1,refine=local,refine_steps=50" \
  --cell "intra+sequential-shrink-0.1+distill-100=method=ngc,topology=intra,alloc=uniform,sequential=true,sequential_shrink=0.1,refine=distill,refine_steps=100" \
  "$@"
