#!/usr/bin/env bash
# Dense models on every item of every task (issue: evaluation suite), on a CUDA machine in float32: the seven
# zero-shot tasks in full, then GSM8K (5-shot, generation, exact match) in full. Same code path as on the CPU
# (`ngc eval`), only the device and the batch size differ.
# Usage: NGC_DATA_DIR=/path/to/data benchmarks/gpu_dense_tasks.sh MODEL LABEL OUT_DIR [BATCH]
#   MODEL: alias (smollm2-135m, gemma3-270m) or .gguf file; LABEL names the JSON files in OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
usage="usage: benchmarks/gpu_dense_tasks.sh MODEL LABEL OUT_DIR [BATCH]"
model=${1:?$usage} label=${2:?$usage} out=${3:?$usage} batch=${4:-64}
mkdir -p "$out"
$PYTHON -m ngc eval "$model" --tasks zero-shot --device cuda --batch-size "$batch" \
  --json "$out/tasks_${label}_full_cuda.json"
$PYTHON -m ngc eval "$model" --tasks gsm8k --device cuda --batch-size "$batch" \
  --json "$out/tasks_${label}_gsm8k_full_cuda.json"
