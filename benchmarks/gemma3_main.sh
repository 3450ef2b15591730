#!/usr/bin/env bash
# Gemma-3-270M at R = 0.3 (RATIOS=0.5 for R = 0.5) with the protocol of the SmolLM2 tables (64 x 512 calibration tokens of WikiText-2
# validation, seed 0; first 16 windows of 2048 tokens of WikiText-2 test; BOS at the start of every window, as Gemma
# needs). Three resumable groups of cells, each its own file (finished cells are skipped), so they can run side by
# side: SVD-LLM, Basis Sharing and NGC's earlier defaults (gemma3_main.json); the newer peers ZS-SVD and AA-SVD
# (gemma3_peers.json); NGC's defaults, the same with the earlier sequential ridge of 0.1 at R = 0.3 and with the
# earlier uniform ranks at R = 0.5 (gemma3_ngc.json).
# Usage: NGC_DATA_DIR=/path/to/data benchmarks/gemma3_main.sh [main|peers|ngc ...]   (default: all three)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
RATIOS=${RATIOS:-0.3}
run() { $PYTHON benchmarks/compare.py --model gemma3-270m --ratios "$RATIOS" "$@"; }
for part in "${@:-main peers ngc}"; do
  for group in $part; do
    case $group in
      main) run --out benchmarks/results/gemma3_main.json --cell "svd-llm=method=svd-llm" \
              --cell "basis-sharing=method=basis-sharing" --cell "ngc=method=ngc,alloc=uniform,refine=none,sequential_shrink=0.1" ;;
      peers) run --out benchmarks/results/gemma3_peers.json --cell "zs-svd=method=zs-svd" --cell "aa-svd=method=aa-svd" ;;
      ngc) run --out benchmarks/results/gemma3_ngc.json --cell "ngc=method=ngc" \
             --cell "ngc:ridge-0.1=method=ngc,sequential_shrink=0.1,ratios=0.3" \
             --cell "ngc:uniform=method=ngc,alloc=uniform,ratios=0.5" ;;
      *) echo "unknown group $group (main, peers, ngc)" >&2; exit 2 ;;
    esac
  done
done
