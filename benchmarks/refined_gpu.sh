#!/usr/bin/env bash
# Refined rows of the main table on a CUDA machine (float32): NGC (training-free default + distillation), SVD-LLM
# and Basis Sharing, each with the same refinement (STEPS steps of whole-model KL distillation to the dense model,
# one 512-token calibration window per step, relative lr 1e-3, cosine), and the same calibration and evaluation as
# benchmarks/results/baselines_smollm2.json. Ratios one after another, so the lowest R finishes first. Resumable.
# Usage: NGC_DATA_DIR=/path/to/data benchmarks/refined_gpu.sh MODEL OUT.json [STEPS] [RATIOS]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
usage="usage: benchmarks/refined_gpu.sh MODEL OUT.json [STEPS] [RATIOS]"
model=${1:?$usage} out=${2:?$usage} steps=${3:-1000} ratios=${4:-0.2,0.3,0.4,0.5}
for ratio in ${ratios//,/ }; do
  $PYTHON benchmarks/compare.py --model "$model" --device cuda --ratios "$ratio" --out "$out" \
    --cell "ngc+distill-$steps=method=ngc,topology=intra,alloc=uniform,sequential=true,sequential_shrink=0.1,refine=distill,refine_steps=$steps" \
    --cell "svd-llm+distill-$steps=method=svd-llm,refine=distill,refine_steps=$steps" \
    --cell "basis-sharing+distill-$steps=method=basis-sharing,refine=distill,refine_steps=$steps"
done
