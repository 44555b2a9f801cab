#!/usr/bin/env bash
# All the tests: the plain C++ library (CMake, CUDA sources compiled when nvcc exists,
# C++ tests by ctest), then the Python suite (pytest). Run ./setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > build.log 2>&1 || { cat build.log; exit 1; }
ninja -C build >> build.log 2>&1 || { tail -50 build.log; exit 1; }
grep -E "pyruntime: (CPU|CUDA)" build.log || true
(cd build && ctest --output-on-failure)
.venv/bin/python -m pytest -q "$@"
