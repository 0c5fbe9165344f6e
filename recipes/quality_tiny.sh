#!/usr/bin/env bash
# Rebuild the shipped `inkwell-tiny-int4` (FAIR-Calib, int4 g128) from `inkwell-tiny`, quantize the
# comparison candidates from the same Stage I rollouts, and evaluate them all against the FP model at
# DESIGN section 7's scale (every one of the 128 canvas positions of each prompt is a scored commit).
#
#   bash recipes/quality_tiny.sh [WORK_DIR] [PROMPTS]      # defaults: q, 200
#
# Served setting (int4, group 128): rtn, gptq, gptq-masked (masked-canvas calibration), fair (= the
# shipped model), and the prior ablations fair-uniform, fair-frontier, fair-reliability, fair-additive.
# Stress regime, 3-bit (group 128): b3-rtn, b3-gptq, b3-gptq-masked, b3-fair, the same four ablations
# (b3-fair-uniform, ...), b3-fair with the floor at 0.01 and 0.25 and with lambda1 0.2 (b3-fair-l0.2), and
# FAIR-Calib (and its uniform ablation) calibrated on masked canvases, b3-fair-masked and
# b3-fair-uniform-masked.
# Stress regime, per-channel int4 (group = K): gK-rtn, gK-gptq, gK-gptq-masked, gK-fair and its four
# ablations.
# Every eval scores the teacher's low_confidence trajectories, except "random": random commit order for
# the served rtn, gptq, gptq-masked, fair and fair-uniform, the per-channel gptq and fair, and the 3-bit
# rtn, gptq, fair, fair-uniform, gptq-masked and fair-masked.
# Free-running agreement (each candidate's own generation against the teacher's) for rtn, gptq,
# gptq-masked, fair and its four prior ablations, the 3-bit rtn, gptq, fair, its four ablations,
# fair-masked and gptq-masked, and the per-channel gptq, gptq-masked, fair and fair-uniform: a last eval
# that reuses every cached score and adds only the generations.
# The Stage I order investigation: fair-lc, gptq-lc, fair-lcprior, b3-fair-lcprior and gK-fair-lcprior (see
# the builds), scored in low_confidence order (lcprior, lcprior-b3, lcprior-gK) and random order
# (lcprior-random, lcprior-gK-random).
# Calibration seeds 1 and 2 (the default is 0): gptq and fair served, and gptq, fair and fair-uniform at 3
# bits, rebuilt from each seed's own Stage I and scored beside the seed-0 builds (seed1-b3, seed2-b3,
# seed-served), and the 3-bit gptq and fair of every seed free-running (seed-free).
# Results land in WORK_DIR/{served,b3,b3masked,gK,random,lcprior,lcprior-b3,lcprior-gK,lcprior-random,
# lcprior-gK-random,seed1-b3,seed2-b3,seed-served,seed-free,free}/ (eval.json, eval.md, plots). QUALITY.md's
# 200 x 128 sections ran the same candidates and flags in smaller batches (their commands are quoted
# there).
# Time on a 2-core CPU: builds ~75 min on one thread (about half that as two streams); evaluation ~13-15
# min a model (teacher included), free-running ~13 min a model. The evals share WORK_DIR/evalcache, so
# later ones reuse the teacher and every scored model, and a re-run reuses every finished model.
set -euo pipefail
work=${1:-q}
prompts=${2:-200}
export HF_HUB_OFFLINE=1
# float64 Stage II: the same codes on any CPU (the shipped model's provenance test re-makes it)
# (a --group-size given to q comes after this one, so it wins)
q() { inkwell-quantize --model inkwell-tiny --group-size 128 --threads 1 --compute-dtype float64 "$@"; }

q --method fair-calib --out "$work/fair" --save-rollouts true
rollouts=("--rollouts-file" "$work/fair/stage1_rollouts.pt")
q --method rtn --out "$work/rtn"
q --method gptq --out "$work/gptq" "${rollouts[@]}"
q --method gptq --calib-canvas masked --out "$work/gptq-masked" "${rollouts[@]}"
for prior in uniform frontier reliability additive; do
  q --method fair-calib --prior "$prior" --out "$work/fair-$prior" "${rollouts[@]}"
done
q --method rtn --bits 3 --out "$work/b3-rtn"
q --method gptq --bits 3 --out "$work/b3-gptq" "${rollouts[@]}"
q --method gptq --bits 3 --calib-canvas masked --out "$work/b3-gptq-masked" "${rollouts[@]}"
for prior in fair uniform frontier reliability additive; do
  name=b3-fair-$prior; [ "$prior" = fair ] && name=b3-fair
  q --method fair-calib --bits 3 --prior "$prior" --out "$work/$name" "${rollouts[@]}"
done
# FAIR-Calib calibrated on masked canvases (QUALITY.md, "block inputs")
q --method fair-calib --bits 3 --calib-canvas masked --out "$work/b3-fair-masked" "${rollouts[@]}"
q --method fair-calib --bits 3 --prior uniform --calib-canvas masked --out "$work/b3-fair-uniform-masked" \
  "${rollouts[@]}"
for floor in 0.01 0.25; do  # the reply's weight over the floor (QUALITY.md, "RTN and every ablation")
  q --method fair-calib --bits 3 --floor "$floor" --out "$work/b3-fair-floor$floor" "${rollouts[@]}"
done
q --method fair-calib --bits 3 --lambda1 0.2 --out "$work/b3-fair-l0.2" "${rollouts[@]}"  # between frontier-only and 0.5
q --method rtn --group-size 0 --out "$work/gK-rtn"
q --method gptq --group-size 0 --out "$work/gK-gptq" "${rollouts[@]}"
q --method gptq --group-size 0 --calib-canvas masked --out "$work/gK-gptq-masked" "${rollouts[@]}"
q --method fair-calib --group-size 0 --out "$work/gK-fair" "${rollouts[@]}"
for prior in uniform frontier reliability additive; do
  q --method fair-calib --group-size 0 --prior "$prior" --out "$work/gK-fair-$prior" "${rollouts[@]}"
done
# the prior estimated in the served low_confidence order (QUALITY.md, "Stage I in the served order"):
# fair-lc also calibrates on those rollouts' replies (gptq-lc is its GPTQ twin); fair-lcprior and
# b3-fair-lcprior take only its prior and keep the random-order replies of every other build
q --method fair-calib --stage1-order low_confidence --out "$work/fair-lc" --save-rollouts true
q --method gptq --stage1-order low_confidence --out "$work/gptq-lc" --rollouts-file "$work/fair-lc/stage1_rollouts.pt"
lcprior=(--prior-file "$work/fair-lc/fair_calib_prior.json" "${rollouts[@]}")
q --method fair-calib --out "$work/fair-lcprior" "${lcprior[@]}"
q --method fair-calib --bits 3 --out "$work/b3-fair-lcprior" "${lcprior[@]}"
q --method fair-calib --group-size 0 --out "$work/gK-fair-lcprior" "${lcprior[@]}"
# calibration seeds 1 and 2 (QUALITY.md, "calibration seed"): other calibration prompts, Stage I order
# and masks; each seed's builds share that seed's Stage I rollouts
for seed in 1 2; do
  q --method fair-calib --seed "$seed" --out "$work/s$seed-fair" --save-rollouts true
  seeded=(--seed "$seed" --rollouts-file "$work/s$seed-fair/stage1_rollouts.pt")
  q --method gptq --out "$work/s$seed-gptq" "${seeded[@]}"
  q --method gptq --bits 3 --out "$work/s$seed-b3-gptq" "${seeded[@]}"
  q --method fair-calib --bits 3 --out "$work/s$seed-b3-fair" "${seeded[@]}"
  q --method fair-calib --bits 3 --prior uniform --out "$work/s$seed-b3-fair-uniform" "${seeded[@]}"
done

evaluate() {  # OUT_NAME ORDER FREE_RUNNING BASELINE PAIRS CANDIDATE...
  local out=$1 order=$2 free=$3 baseline=$4 pairs=$5 candidates=()
  shift 5
  for name in "$@"; do candidates+=("--candidate" "$name=$work/$name"); done
  mkdir -p "$work/$out"
  inkwell-eval --reference inkwell-tiny "${candidates[@]}" --baseline "$baseline" --pairs "$pairs" \
    --orders "$order" --prompts "$prompts" --early-stop false --free-running "$free" \
    --probe-stride 16 --probe-positions 4 --nll-windows 32 --threads 2 --cache-dir "$work/evalcache" \
    --json "$work/$out/eval.json" --markdown "$work/$out/eval.md" --plots "$work/$out/plots"
}
ablations() { local p=$1 out="" a; for a in uniform frontier reliability additive; do out+="$p:$p-$a,"; done; echo "${out%,}"; }
evaluate served low_confidence false gptq "$(ablations fair),fair:gptq-masked,gptq-masked:gptq,rtn:gptq" \
  gptq rtn gptq-masked fair fair-uniform fair-frontier fair-reliability fair-additive
evaluate b3 low_confidence false b3-gptq "$(ablations b3-fair),b3-fair-frontier:b3-fair-uniform,b3-fair:b3-gptq-masked" \
  b3-gptq b3-rtn b3-gptq-masked b3-fair b3-fair-uniform b3-fair-frontier b3-fair-reliability b3-fair-additive \
  b3-fair-floor0.01 b3-fair-floor0.25 b3-fair-l0.2
evaluate b3masked low_confidence false b3-gptq-masked \
  b3-fair-masked:b3-fair,b3-fair-masked:b3-fair-uniform-masked,b3-fair-uniform-masked:b3-fair-uniform,b3-fair-uniform-masked:b3-gptq-masked \
  b3-gptq-masked b3-fair b3-fair-uniform b3-fair-masked b3-fair-uniform-masked
evaluate gK low_confidence false gK-gptq "$(ablations gK-fair),gK-fair:gK-gptq-masked,gK-gptq-masked:gK-gptq,gK-rtn:gK-gptq" \
  gK-gptq gK-rtn gK-gptq-masked gK-fair gK-fair-uniform gK-fair-frontier gK-fair-reliability gK-fair-additive
evaluate random random false gptq \
  fair:gptq,fair:fair-uniform,fair-uniform:gptq,rtn:gptq,gptq-masked:gptq,fair:gptq-masked,gK-fair:gK-gptq,gK-gptq:gptq,b3-fair:b3-gptq,b3-fair:b3-fair-uniform,b3-fair-uniform:b3-gptq,b3-gptq-masked:b3-gptq,b3-fair-masked:b3-fair,b3-fair-masked:b3-gptq-masked,b3-rtn:b3-gptq \
  gptq fair fair-uniform rtn gptq-masked gK-gptq gK-fair b3-rtn b3-gptq b3-fair b3-fair-uniform b3-gptq-masked b3-fair-masked
evaluate lcprior low_confidence false gptq \
  fair-lcprior:fair,fair-lcprior:fair-uniform,fair-lcprior:gptq,fair-lc:gptq-lc,fair-lc:fair,gptq-lc:gptq,fair-lc:gptq \
  gptq fair fair-uniform fair-lcprior fair-lc gptq-lc
evaluate lcprior-b3 low_confidence false b3-gptq b3-fair-lcprior:b3-fair,b3-fair-lcprior:b3-fair-uniform,b3-fair-lcprior:b3-gptq \
  b3-gptq b3-fair b3-fair-uniform b3-fair-lcprior
evaluate lcprior-gK low_confidence false gK-gptq gK-fair-lcprior:gK-fair,gK-fair-lcprior:gK-fair-uniform,gK-fair-lcprior:gK-gptq \
  gK-gptq gK-fair gK-fair-uniform gK-fair-lcprior
evaluate lcprior-random random false gptq \
  fair-lcprior:fair,fair-lcprior:fair-uniform,fair-lcprior:gptq,fair-lc:gptq,fair-lc:fair,b3-fair-lcprior:b3-fair,b3-fair-lcprior:b3-fair-uniform,b3-fair-lcprior:b3-gptq \
  gptq fair fair-uniform fair-lcprior fair-lc b3-gptq b3-fair b3-fair-uniform b3-fair-lcprior
evaluate lcprior-gK-random random false gK-gptq gK-fair-lcprior:gK-fair,gK-fair-lcprior:gK-fair-uniform,gK-fair-lcprior:gK-gptq \
  gK-gptq gK-fair gK-fair-uniform gK-fair-lcprior
for seed in 1 2; do
  p=s$seed-b3
  evaluate "seed$seed-b3" low_confidence false b3-gptq \
    "$p-fair:$p-gptq,$p-fair:$p-fair-uniform,$p-fair:b3-fair,$p-gptq:b3-gptq,$p-fair-uniform:b3-fair-uniform" \
    b3-gptq b3-fair b3-fair-uniform "$p-gptq" "$p-fair" "$p-fair-uniform"
done
evaluate seed-served low_confidence false gptq s1-fair:s1-gptq,s2-fair:s2-gptq,s1-fair:fair,s2-fair:fair,s1-gptq:gptq,s2-gptq:gptq \
  gptq fair s1-gptq s1-fair s2-gptq s2-fair
evaluate seed-free low_confidence true b3-gptq \
  s1-b3-fair:s1-b3-gptq,s2-b3-fair:s2-b3-gptq,s1-b3-gptq:b3-gptq,s2-b3-gptq:b3-gptq,s1-b3-fair:b3-fair,s2-b3-fair:b3-fair \
  b3-gptq b3-fair s1-b3-gptq s1-b3-fair s2-b3-gptq s2-b3-fair
evaluate free low_confidence true gptq \
  fair:gptq,fair:fair-uniform,fair-uniform:gptq,rtn:gptq,gptq-masked:gptq,fair:gptq-masked,b3-fair:b3-gptq,b3-fair:b3-fair-uniform,b3-gptq:gptq,gK-fair:gK-gptq,b3-fair-masked:b3-fair,b3-fair-masked:b3-gptq-masked,$(ablations fair),$(ablations b3-fair),b3-rtn:b3-gptq,gK-fair:gK-fair-uniform,gK-gptq-masked:gK-gptq,gK-fair:gK-gptq-masked \
  gptq rtn gptq-masked fair fair-uniform fair-frontier fair-reliability fair-additive b3-rtn b3-gptq b3-fair \
  b3-fair-uniform b3-fair-frontier b3-fair-reliability b3-fair-additive gK-gptq gK-fair gK-fair-uniform gK-gptq-masked \
  b3-fair-masked b3-gptq-masked
