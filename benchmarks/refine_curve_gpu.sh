#!/usr/bin/env bash
# The refinement-budget curve on a CUDA machine: the CPU curve's protocol (64 x 512 calibration, seed 0; whole
# WikiText-2 validation split as refinement data; 16 x 2048 test tokens) with the budgets a CPU cannot reach,
# for NGC's defaults (and with the earlier sequential ridge of 0.1) and the peers at R = 0.2 and 0.4. Resumable;
# rows go to OUT (default benchmarks/results/refine_curve_smollm2_cuda.json), plot beside it.
# Usage: NGC_DATA_DIR=/path/to/data benchmarks/refine_curve_gpu.sh [OUT] [BUDGETS]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
out=${1:-benchmarks/results/refine_curve_smollm2_cuda.json}
budgets=${2:-0,100000,300000,1000000,3000000}
$PYTHON benchmarks/refine_curve.py --device cuda --methods 'ngc,ngc#sequential-shrink=0.1,zs-svd,aa-svd,svd-llm,basis-sharing' \
  --ratios 0.2,0.4 --budgets "$budgets" --calib-samples 64 --calib-len 512 --resume \
  --out "$out" --plot "${out%.json}.png"
