#!/usr/bin/env bash
# The hypothesis report of SPEC §8.4 on ARC-Easy: per-item stability and driving ratio of the prompt against whether
# the model answered correctly, for dense SmolLM2-135M and its NGC checkpoint at R = 0.3 (made here if missing, with
# `ngc compress`'s defaults), then one table and one plot for both (benchmarks/hypothesis_report.py).
# Usage: NGC_DATA_DIR=/path/to/data benchmarks/dynamics_hypothesis.sh [ITEMS]   (default: the first 200 items)
set -euo pipefail
cd "$(dirname "$0")/.."
NGC=${NGC:-.venv/bin/ngc}
PYTHON=${PYTHON:-.venv/bin/python}
ITEMS=${1:-200}
CKPT=${CKPT:-${NGC_CACHE_DIR:-$HOME/.cache/ngc}/checkpoints/smollm2-ngc-r03}
OUT=benchmarks/results/hypothesis_arc_easy
[ -f "$CKPT/ngc.json" ] || $NGC compress smollm2-135m --method ngc --ratio 0.3 --alloc uniform --refine none --sequential-shrink 0.1 --out "$CKPT"
COMMON=(--task arc_easy --sequences "$ITEMS" --probes 2 --lanczos 0 --force)
$NGC dynamics smollm2-135m "${COMMON[@]}" --out "$OUT/dense"
$NGC dynamics "$CKPT" --reference smollm2-135m "${COMMON[@]}" --out "$OUT/ngc-r03"
$PYTHON benchmarks/hypothesis_report.py "$OUT/dense" "$OUT/ngc-r03" --names dense,ngc-r0.3 --out "$OUT"
