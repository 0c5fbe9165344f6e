#!/usr/bin/env bash
# Rebuild the shipped `inkwell-tiny-int4` (FAIR-Calib, int4 g128) from `inkwell-tiny`, quantize the
# comparison candidates from the same Stage I rollouts, and evaluate them all against the FP model at
# DESIGN section 7's scale (every one of the 128 canvas positions of each prompt is a scored commit).
#
#   bash recipes/quality_tiny.sh [WORK_DIR] [PROMPTS]      # defaults: q, 200
#
# Served setting (int4, group 128): rtn, gptq, gptq-masked (masked-canvas calibration), fair (= the
# shipped model), and the prior ablations fair-uniform, fair-frontier, fair-reliability, fair-additive.
# Stress regime (3-bit, group 128): b3-gptq, b3-fair, b3-fair-uniform.
# Results land in WORK_DIR/served/ and WORK_DIR/b3/ (eval.json, eval.md, plots). QUALITY.md's 200 x 128
# sections ran the same candidates and flags in smaller batches (their commands are quoted there).
# Time on a 2-core CPU: builds ~12 min; evaluation ~13 min a model (teacher included). The two evals
# share WORK_DIR/evalcache, so the 3-bit one reuses the teacher, and a re-run reuses every finished model.
set -euo pipefail
work=${1:-q}
prompts=${2:-200}
export HF_HUB_OFFLINE=1
# float64 Stage II: the same codes on any CPU (the shipped model's provenance test re-makes it)
q() { inkwell-quantize --model inkwell-tiny --group-size 128 --threads 1 --compute-dtype float64 "$@"; }

q --method fair-calib --out "$work/fair" --save-rollouts true
rollouts=("--rollouts-file" "$work/fair/stage1_rollouts.pt")
q --method rtn --out "$work/rtn"
q --method gptq --out "$work/gptq" "${rollouts[@]}"
q --method gptq --calib-canvas masked --out "$work/gptq-masked" "${rollouts[@]}"
for prior in uniform frontier reliability additive; do
  q --method fair-calib --prior "$prior" --out "$work/fair-$prior" "${rollouts[@]}"
done
q --method gptq --bits 3 --out "$work/b3-gptq" "${rollouts[@]}"
q --method fair-calib --bits 3 --out "$work/b3-fair" "${rollouts[@]}"
q --method fair-calib --bits 3 --prior uniform --out "$work/b3-fair-uniform" "${rollouts[@]}"

evaluate() {  # OUT_NAME BASELINE PAIRS CANDIDATE...
  local out=$1 baseline=$2 pairs=$3 candidates=()
  shift 3
  for name in "$@"; do candidates+=("--candidate" "$name=$work/$name"); done
  mkdir -p "$work/$out"
  inkwell-eval --reference inkwell-tiny "${candidates[@]}" --baseline "$baseline" --pairs "$pairs" \
    --orders low_confidence --prompts "$prompts" --early-stop false --free-running false \
    --probe-stride 16 --probe-positions 4 --nll-windows 32 --threads 2 --cache-dir "$work/evalcache" \
    --json "$work/$out/eval.json" --markdown "$work/$out/eval.md" --plots "$work/$out/plots"
}
evaluate served gptq fair:fair-uniform,fair:fair-frontier,fair:fair-reliability,fair:fair-additive \
  gptq rtn gptq-masked fair fair-uniform fair-frontier fair-reliability fair-additive
evaluate b3 b3-gptq b3-fair:b3-fair-uniform b3-gptq b3-fair b3-fair-uniform
