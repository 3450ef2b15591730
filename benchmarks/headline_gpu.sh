#!/usr/bin/env bash
# The headline q, k, v setting (R = 0.7 over q, k, v) on a CUDA machine: every method, WikiText-2 perplexity and
# the seven zero-shot tasks on every item, SmolLM2-135M then Gemma-3-270M. Resumable (finished cells are kept in
# benchmarks/results/headline_qkv_<model>_full/results.json and skipped); cells to run can be limited with
# ONLY=ngc@0.7,zs-svd@0.7.
# Usage: NGC_DATA_DIR=/path/to/data benchmarks/headline_gpu.sh [smollm2] [gemma3]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
only=(); [[ -n "${ONLY:-}" ]] && only=(--only "$ONLY")
for model in "${@:-smollm2 gemma3}"; do
  for m in $model; do
    $PYTHON benchmarks/harness.py "benchmarks/specs/headline_qkv_${m}_full.yaml" --device cuda "${only[@]}"
  done
done
