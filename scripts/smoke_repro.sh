#!/usr/bin/env bash
# CI metric regression check: run the whole pipeline on the `smoke` profile in a scratch copy
# of this checkout (so the working tree, dvc.lock and artifacts/ stay untouched), then compare
# its reports/metrics.json with the committed smoke baseline. Exits non-zero on a regression.
#   bash scripts/smoke_repro.sh [BASELINE]     (default reports/baselines/smoke.json)
# SMOKE_SEED=N runs with another seed; SMOKE_OUT=DIR keeps the run's reports/ (both are how the
# baseline's tolerances were measured: scripts/smoke_baseline.py).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# this CPU kind's baseline (faceinpaint.regression.baseline_path): roundings differ across CPUs
baseline=${1:-$("$root/.venv/bin/python" -c "from faceinpaint.regression import baseline_path as b; print(b('reports/baselines/smoke.json'))")}
echo "smoke baseline: $baseline"
work=$(mktemp -d "${TMPDIR:-/tmp}/faceinpaint-smoke.XXXXXX")
trap 'rm -rf "$work"' EXIT
. scripts/scratch_repo.sh
scratch_repo "$work"
if [ -n "${SMOKE_SEED:-}" ]; then sed -i "s/^seed: .*/seed: $SMOKE_SEED/" params.yaml; fi
export FACEINPAINT_MLFLOW=${FACEINPAINT_MLFLOW:-0}
# the baseline was recorded with two intra-op threads; results are bit-for-bit per thread count
export OMP_NUM_THREADS=${SMOKE_THREADS:-2}
start=$(date +%s)
dvc repro --force
echo "smoke dvc repro took $(( $(date +%s) - start )) s"
if [ -n "${SMOKE_OUT:-}" ]; then mkdir -p "$SMOKE_OUT" && cp -r reports/. "$SMOKE_OUT/"; fi
faceinpaint check-metrics reports/metrics.json "$root/$baseline"
