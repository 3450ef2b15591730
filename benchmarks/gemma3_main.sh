#!/usr/bin/env bash
# Gemma-3-270M at R = 0.3: SVD-LLM, Basis Sharing and the NGC training-free default, with the protocol of the
# SmolLM2 tables (64 x 512 calibration tokens of WikiText-2 validation, seed 0; first 16 windows of 2048 tokens of
# WikiText-2 test; BOS at the start of every window, as Gemma needs). Resumable: finished cells are skipped.
# Usage: NGC_DATA_DIR=/path/to/data benchmarks/gemma3_main.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
$PYTHON benchmarks/compare.py --model gemma3-270m --ratios 0.3 --out benchmarks/results/gemma3_main.json \
  --cell "svd-llm=method=svd-llm" \
  --cell "basis-sharing=method=basis-sharing" \
  --cell "ngc=method=ngc"
