#!/usr/bin/env bash
# NGC rows of the main table (SmolLM2-135M, WikiText-2 test, same calibration and evaluation as
# benchmarks/results/baselines_smollm2.json): the training-free default (intra groups, uniform ranks, sequential
# update with shrink 0.1) at R = 0.2, 0.4, 0.5 (R = 0.3 is the ablation's intra+sequential-shrink-0.1 cell, the
# same setting), then the distilled row at R = 0.2. Resumable: finished cells are skipped.
# Usage: NGC_DATA_DIR=/path/to/data benchmarks/ngc_main.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
$PYTHON benchmarks/compare.py --ratios 0.2,0.4,0.5 --out benchmarks/results/ngc_smollm2.json \
  --cell "ngc=method=ngc,topology=intra,alloc=uniform,sequential=true,sequential_shrink=0.1" \
  --cell "ngc+distill-100=method=ngc,topology=intra,alloc=uniform,sequential=true,sequential_shrink=0.1,refine=distill,refine_steps=100,ratios=0.2"
