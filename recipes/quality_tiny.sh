#!/usr/bin/env bash
# Rebuild the shipped `inkwell-tiny-int4` (FAIR-Calib, int4 g128) from `inkwell-tiny`, quantize the
# comparison candidates from the same Stage I rollouts, and evaluate them all against the FP model.
#
#   bash recipes/quality_tiny.sh [WORK_DIR] [PROMPTS]      # defaults: q, 64
#
# Served setting: rtn, gptq, fair (= the shipped model), fair-uniform (the uniform-prior ablation);
# stress regime (3-bit, group 128): b3-gptq, b3-fair, b3-fair-uniform. Results land in WORK_DIR/eval.*
# and the plots in WORK_DIR/plots; QUALITY.md quotes them.
set -euo pipefail
work=${1:-q}
prompts=${2:-64}
export HF_HUB_OFFLINE=1
# float64 Stage II: the same codes on any CPU (the shipped model's provenance test re-makes it)
q() { inkwell-quantize --model inkwell-tiny --group-size 128 --threads 1 --compute-dtype float64 "$@"; }

q --method fair-calib --out "$work/fair" --save-rollouts true
rollouts=("--rollouts-file" "$work/fair/stage1_rollouts.pt")
q --method rtn --out "$work/rtn"
q --method gptq --out "$work/gptq" "${rollouts[@]}"
q --method fair-calib --prior uniform --out "$work/fair-uniform" "${rollouts[@]}"
q --method gptq --bits 3 --out "$work/b3-gptq" "${rollouts[@]}"
q --method fair-calib --bits 3 --out "$work/b3-fair" "${rollouts[@]}"
q --method fair-calib --bits 3 --prior uniform --out "$work/b3-fair-uniform" "${rollouts[@]}"

candidates=()
for name in rtn gptq fair fair-uniform b3-gptq b3-fair b3-fair-uniform; do
  candidates+=("--candidate" "$name=$work/$name")
done
inkwell-eval --reference inkwell-tiny "${candidates[@]}" --baseline gptq \
  --pairs fair:fair-uniform,b3-fair:b3-gptq,b3-fair:b3-fair-uniform \
  --orders low_confidence --prompts "$prompts" --probe-stride 4 --probe-positions 8 --nll-windows 48 \
  --free-running false --threads 1 --json "$work/eval.json" --markdown "$work/eval.md" --plots "$work/plots"
