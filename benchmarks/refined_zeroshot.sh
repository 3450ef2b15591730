#!/usr/bin/env bash
# Zero-shot accuracy of refined NGC: NGC's defaults at ratio R (closed form and block steps), then TOKENS tokens of
# whole-model distillation to the dense model on the calibration corpus's split (refine_curve.py's protocol:
# 64 x 512 calibration windows, seed 0, lr 1e-3, held-out early stopping). The checkpoint is then scored on the
# 16 x 2048 WikiText-2 test windows and the seven zero-shot tasks (first LIMIT items each, batch 16: the
# zeroshot_peers spec's settings, whose dense row is the reference). LIMIT=0 scores every item (the GPU setting).
# Usage: NGC_DATA_DIR=/path/to/data benchmarks/refined_zeroshot.sh [R] [TOKENS] [LIMIT] [DEVICE]
set -euo pipefail
cd "$(dirname "$0")/.."
NGC=${NGC:-.venv/bin/ngc}
ratio=${1:-0.2} tokens=${2:-100000} limit=${3:-500} device=${4:-cpu}
name="ngc-r${ratio}-distill-${tokens}"
ckpt=${CKPT_DIR:-out}/$name
out=benchmarks/results/refined_zeroshot_smollm2
mkdir -p "$out"
if [ ! -f "$ckpt/ngc.json" ]; then
  $NGC compress smollm2-135m --method ngc --ratio "$ratio" --calib-samples 64 --calib-len 512 --seed 0 \
    --refine block+distill --refine-tokens "$tokens" --device "$device" --out "$ckpt" --force \
    --json "$out/$name.compress.json"
fi
limit_args=()
[ "$limit" != 0 ] && limit_args=(--limit "$limit")
$NGC eval "$ckpt" --ppl wikitext2 --ppl-len 2048 --max-windows 16 --tasks zero-shot "${limit_args[@]}" \
  --batch-size 16 --device "$device" --json "$out/$name.eval.json"
