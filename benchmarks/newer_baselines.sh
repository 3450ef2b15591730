#!/usr/bin/env bash
# svd-llm-v2, aa-svd and zs-svd (and svd-llm as the reference) on SmolLM2-135M: one compress + one WikiText-2 eval
# per cell, the protocol of baselines_smollm2 (64 x 512 calibration, seed 0; test perplexity on the first 16 windows
# of 2048 tokens of WikiText-2, and of GSM8K's questions and solutions as a second, different text). Each cell's
# compress/eval JSON and wall times go to benchmarks/results/newer_baselines_smollm2/;
# benchmarks/newer_baselines_table.py gathers them into newer_baselines_smollm2.json.
# Usage: NGC_DATA_DIR=/path/to/data benchmarks/newer_baselines.sh METHOD[~TOPOLOGY][+REFINE][:ALLOC][#OPT=V,...]@RATIO
#   e.g. aa-svd@0.4 svd-llm-v2@0.2 ngc+block:uniform@0.4 ngc~per-matrix+block:zero-sum#refine-lr=3e-3@0.2
#   (~TOPOLOGY: --topology TOPOLOGY; +REFINE: --refine REFINE; :ALLOC: --alloc ALLOC; #OPT=V: --OPT V; #FLAG: --FLAG)
set -euo pipefail
cd "$(dirname "$0")/.."
NGC=${NGC:-.venv/bin/ngc}
OUT=benchmarks/results/newer_baselines_smollm2
mkdir -p "$OUT"
for cell in "$@"; do
  label=${cell}; head=${cell%@*}; ratio=${cell#*@}
  extra=()
  if [[ "$head" == *#* ]]; then
    IFS=, read -ra opts <<< "${head#*#}"; head=${head%%#*}
    for opt in "${opts[@]}"; do
      if [[ "$opt" == *=* ]]; then extra+=("--${opt%%=*}" "${opt#*=}"); else extra+=("--${opt}"); fi
    done
  fi
  alloc=(); [[ "$head" == *:* ]] && alloc=(--alloc "${head#*:}") && head=${head%%:*}
  refine=(); [[ "$head" == *+* ]] && refine=(--refine "${head#*+}") && head=${head%%+*}
  topology=(); [[ "$head" == *~* ]] && topology=(--topology "${head#*~}") && head=${head%%~*}
  method=$head
  args=(--method "$method" --ratio "$ratio" "${topology[@]}" "${refine[@]}" "${alloc[@]}" "${extra[@]}"
    --calib-samples 64 --calib-len 512)
  ckpt=$(mktemp -d)/ckpt
  start=$(date +%s)
  $NGC compress smollm2-135m "${args[@]}" --out "$ckpt" --json "$OUT/${label}.compress.json"
  mid=$(date +%s)
  $NGC eval "$ckpt" --ppl wikitext2 --max-windows 16 --json "$OUT/${label}.eval.json"
  $NGC eval "$ckpt" --ppl gsm8k --max-windows 16 --json "$OUT/${label}.gsm8k.json"
  printf '{"compress_seconds": %d, "eval_seconds": %d, "command": "ngc compress smollm2-135m %s --out DIR"}\n' \
    $(( mid - start )) $(( $(date +%s) - mid )) "${args[*]}" > "$OUT/${label}.wall.json"
  rm -rf "$(dirname "$ckpt")"
done
