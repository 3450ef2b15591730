#!/usr/bin/env bash
# Dense baselines: WikiText-2 raw test perplexity of the packaged models, fp32, full test set, L = 2048 and 512.
# Writes one JSON per run to benchmarks/results/ and a log with the wall time of each command.
# Usage: NGC_DATA_DIR=/path/to/data benchmarks/wikitext2_ppl.sh [MODEL ...]   (default: smollm2-135m gemma3-270m)
set -euo pipefail
cd "$(dirname "$0")/.."
NGC=${NGC:-.venv/bin/ngc}
OUT=benchmarks/results
mkdir -p "$OUT"
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(smollm2-135m gemma3-270m)
for model in "${models[@]}"; do
  for len in 2048 512; do
    start=$(date +%s)
    $NGC eval "$model" --ppl wikitext2 --ppl-len "$len" --dtype float32 --json "$OUT/ppl_${model}_L${len}.json"
    echo "$model L=$len wall $(( $(date +%s) - start )) s" | tee -a "$OUT/wikitext2_ppl.log"
  done
done
