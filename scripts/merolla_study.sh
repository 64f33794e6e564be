#!/usr/bin/env bash
# Merolla et al. (2016) robustness study, MNIST analogue, end to end: 26 min (1577 s) measured on a
# quiet 2-core CPU with the defaults (12 training runs of 2.3-4.4 min on one core each, two at a
# time: 20 min; then ~6 min of sweeps in two processes). Nothing outside OUT and BNNREPRO_RUNS is written.
# The trained nets are exactly the merolla_mnist table's rows (`bnnrepro table merolla` reuses them
# and trains only the seeds missing there).
#   1. train the family of training projections (conf/experiment/merolla_<projection>.yaml),
#      SEEDS seeds each, in one Hydra multirun: two jobs at a time, one thread each;
#   2. sweep test-time distortions of every trained net (5 draws per random level):
#        OUT/                  additive, multiplicative, binarize, power, clip of the effective weights
#        OUT/latent/           power of the latent (real) weights
#        OUT/bn_recalibrated/  binarize and power with BN statistics re-estimated on 1000 train images
#   3. OUT/claims.md: do the paper's claims hold here? (computed from the CSVs, nothing typed)
#
#   scripts/merolla_study.sh                                 # the study: scale=quick, seeds 0,1
#   SCALE=smoke SEEDS=0 DRAWS=2 scripts/merolla_study.sh     # a plumbing check in a few minutes
#   SWEEP=runs/multirun/merolla-<stamp> scripts/merolla_study.sh   # reuse trained runs: sweeps only
#
# Environment: SCALE (quick), EPOCHS (scale.epochs; empty = the scale's own, as the table's rows),
# SEEDS (0,1), DRAWS (5), OUT (results/merolla), JOBS (2: parallel training jobs and sweep processes),
# PROJECTIONS (none clip sign stochastic_binary power stochastic_projection), EXTRA (more Hydra
# overrides for training), BNNREPRO_RUNS (runs), BNNREPRO_DATA (the MNIST root; ../shared/data when
# it holds MNIST).
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=${SCALE:-quick}
SEEDS=${SEEDS:-0,1}
DRAWS=${DRAWS:-5}
OUT=${OUT:-results/merolla}
JOBS=${JOBS:-2}
PROJECTIONS=${PROJECTIONS:-none clip sign stochastic_binary power stochastic_projection}
EXTRA=${EXTRA:-}
EPOCHS=${EPOCHS:-}
if [[ -n "$EPOCHS" ]]; then EXTRA="scale.epochs=$EPOCHS $EXTRA"; fi
export BNNREPRO_RUNS=${BNNREPRO_RUNS:-runs}
if [[ -z "${BNNREPRO_DATA:-}" && -f ../shared/data/MNIST/raw/train-images-idx3-ubyte.gz ]]; then
  export BNNREPRO_DATA=$(cd ../shared/data && pwd)
fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
BNNREPRO=${BNNREPRO:-$( [[ -x .venv/bin/bnnrepro ]] && echo .venv/bin/bnnrepro || echo bnnrepro )}
start=$(date +%s)
stamp() { printf '[%4ds] %s\n' $(( $(date +%s) - start )) "$*"; }

if [[ -z "${SWEEP:-}" ]]; then
  SWEEP="$BNNREPRO_RUNS/multirun/merolla-$SCALE-$(date +%Y%m%d-%H%M%S)"
  experiments=$(printf 'merolla_%s,' $PROJECTIONS); experiments=${experiments%,}
  stamp "training +experiment=$experiments scale=$SCALE seed=$SEEDS -> $SWEEP"
  mkdir -p "$OUT"
  set +e
  # shellcheck disable=SC2086
  "$BNNREPRO" train -m "+experiment=$experiments" "scale=$SCALE" "seed=$SEEDS" \
    train.num_threads=1 train.progress=false \
    hydra/launcher=joblib "hydra.launcher.n_jobs=$JOBS" "hydra.sweep.dir=$SWEEP" $EXTRA \
    2>&1 | tee "$OUT/train.log" | grep --line-buffered -E '^(bnnrepro train:|epoch|test error|run:)'
  status=${PIPESTATUS[0]}
  set -e
  if (( status != 0 )); then
    echo "merolla_study: training failed (exit $status); see $OUT/train.log" >&2
    tail -n 5 "$OUT/train.log" >&2
    exit "$status"
  fi
  [[ -s "$SWEEP/runs.txt" ]] || { echo "merolla_study: training wrote no $SWEEP/runs.txt" >&2; exit 1; }
fi
stamp "$(wc -l < "$SWEEP/runs.txt") trained runs in $SWEEP"

common=("$SWEEP" --draws "$DRAWS" train.num_threads=1 --quiet)
stamp "sweeps -> $OUT (effective weights), $OUT/latent (latent weights), $OUT/bn_recalibrated"
mkdir -p "$OUT/latent" "$OUT/bn_recalibrated"
# two sweep processes of about equal work; they write different files, so they share $OUT
sweep_a() {
  "$BNNREPRO" robustness --noise additive multiplicative "${common[@]}" --out "$OUT" &&
  "$BNNREPRO" robustness --noise power --weights latent "${common[@]}" --out "$OUT/latent"
}
sweep_b() {
  "$BNNREPRO" robustness --noise binarize power clip "${common[@]}" --out "$OUT" &&
  "$BNNREPRO" robustness --noise binarize power --bn-recalibrate 1000 "${common[@]}" \
    --out "$OUT/bn_recalibrated"
}
pids=()
sweep_a > "$OUT/sweep_a.log" 2>&1 & pids+=($!)
if (( JOBS < 2 )); then  # one process at a time
  wait "${pids[@]}" || { echo "merolla_study: a sweep failed; see $OUT/sweep_a.log" >&2; exit 1; }
  pids=()
fi
sweep_b > "$OUT/sweep_b.log" 2>&1 & pids+=($!)
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
if (( status != 0 )); then
  echo "merolla_study: a sweep failed; see $OUT/sweep_*.log" >&2
  tail -n 5 "$OUT"/sweep_*.log >&2
  exit "$status"
fi

stamp "claims"
"$BNNREPRO" robustness --claims "$OUT" "$OUT/latent" "$OUT/bn_recalibrated" --out "$OUT"
echo "$SWEEP" > "$OUT/runs_sweep.txt"
stamp "done: $OUT/claims.md, $OUT/robustness_<noise>.{csv,md,png}, $OUT/latent/, $OUT/bn_recalibrated/"
