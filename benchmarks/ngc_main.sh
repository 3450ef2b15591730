#!/usr/bin/env bash
# NGC rows of the main table (SmolLM2-135M, WikiText-2 test, same calibration and evaluation as
# benchmarks/results/baselines_smollm2.json): the training-free default (intra groups, uniform ranks, sequential
# update with shrink 0.1) at R = 0.2, 0.4, 0.5 (R = 0.3 is the ablation's intra+sequential-shrink-0.1 cell, the
# same setting), then the distilled rows at R = 0.2: NGC, SVD-LLM and Basis Sharing with the same refinement (100 steps of
# whole-model distillation, one 512-token calibration window per step, relative lr 1e-3). Resumable: finished cells are skipped.
# Usage: NGC_DATA_DIR=/path/to/data benchmarks/ngc_main.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
$PYTHON benchmarks/compare.py --ratios 0.2,0.4,0.5 --out benchmarks/results/ngc_smollm2.json \
  --cell "ngc=method=ngc,topology=intra,alloc=uniform,sequential=true,sequential_shrink=0.1,refine=none" \
  --cell "ngc+distill-100=method=ngc,topology=intra,alloc=uniform,sequential=true,sequential_shrink=0.1,refine=distill,refine_steps=100,ratios=0.2" \
  --cell "svd-llm+distill-100=method=svd-llm,refine=distill,refine_steps=100,ratios=0.2" \
  --cell "basis-sharing+distill-100=method=basis-sharing,refine=distill,refine_steps=100,ratios=0.2"
