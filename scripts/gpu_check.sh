#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py): on a machine with one GPU and PyTorch + Triton, at most
# about 8 minutes. What that machine lacks (diffusers, pydantic, newer transformers, ...) comes as
# wheels in gpu-wheels/ (`make gpu-wheels` builds them here for Python 3.12), installed into a
# scratch folder put first on PYTHONPATH; its own torch is never replaced.
#   scripts/gpu_check.sh [--dry] [--out FOLDER]     (--dry: tiny shapes on the CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
path="$PWD"
if compgen -G "gpu-wheels/*.whl" >/dev/null; then
    site="$(mktemp -d)/site"
    "$PYTHON" -m pip install -q --no-index --no-deps --target "$site" gpu-wheels/*.whl
    path="$site:$path"
fi
export PYTHONPATH="$path${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" scripts/gpu_check.py "$@"
