#!/usr/bin/env bash
# The GPU check (docs/GPU.md): every model's training step at the paper profile in fp32/bf16,
# eager/channels-last/compiled, counted FLOPs, numerics, evaluation throughput ->
# reports/benchmarks/gpu.json (+ gpu.md, a table for the README). About 8 minutes on one GPU.
#
# Needs only a checkout of the repository (no store/, no data/ except, optionally,
# data/weights/faceapi-recognition for the structure model and the identity network), Python
# with torch and torchvision, and for the Python packages the machine lacks a folder of wheels:
#   scripts/gpu_check.sh --wheels /path/to/wheels              # on the GPU (cuda)
#   scripts/gpu_check.sh --device cpu --quick --out /tmp/g.json  # the CPU path, smoke size
# docs/GPU.md says how to build the wheel folder (pip download / pip wheel, on any machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export FACEINPAINT_MLFLOW=0
exec "$PY" scripts/gpu_check.py "$@"
