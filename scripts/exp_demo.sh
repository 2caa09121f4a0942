#!/usr/bin/env bash
# How the README's `dvc exp show --only-changed` / `dvc exp diff` output was made: in a scratch
# copy of this checkout (the working tree, dvc.lock and artifacts/ stay untouched), run the
# `smoke` profile as the baseline commit, then two experiments that each change one budget,
# and print the comparison views. Minutes on 2 cores.
#   bash scripts/exp_demo.sh [OUT]     (OUT: a folder for the printed tables; default: stdout only)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${1:-}
case "$out" in ""|/*) ;; *) out="$root/$out" ;; esac
work=$(mktemp -d "${TMPDIR:-/tmp}/faceinpaint-exp.XXXXXX")
# EXP_KEEP=1 keeps the scratch repository (its path is printed) to try other views in it
if [ -n "${EXP_KEEP:-}" ]; then echo "scratch repository: $work"; else trap 'rm -rf "$work"' EXIT; fi
. scripts/scratch_repo.sh
scratch_repo "$work"
export FACEINPAINT_MLFLOW=${FACEINPAINT_MLFLOW:-0}
dvc repro
git add -A && git -c user.name=scratch -c user.email=scratch@localhost commit -qm "smoke baseline run"
# two experiments, each from the baseline commit (not one on top of the other)
dvc exp run -n texture-40-steps -S profiles.smoke.texture.max_steps=40
git reset -q --hard && dvc checkout -q -f
dvc exp run -n pconv-40-steps -S profiles.smoke.pconv.max_steps=40
git reset -q --hard && dvc checkout -q -f
show() { echo "\$ $*"; "$@"; echo; }
views() {
  # the columns that changed, less the output hashes and all metrics but PSNR, the FD and the
  # images shown, so that the table fits a screen (dvc matches --drop from the start of a name)
  show dvc exp show --only-changed --md --no-pager \
    --drop 'Created|artifacts/|reports/plots|.*:(ssim|lpips.*|id_sim|hole_l1|fd_faceapi.*|fd_samples|n_images)$'
  show dvc exp diff HEAD texture-40-steps --md
}
if [ -n "$out" ]; then mkdir -p "$out" && views | tee "$out/exp_views.md"; else views; fi
