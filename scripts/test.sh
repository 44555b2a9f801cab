#!/usr/bin/env bash
# All the tests. Run ./setup.sh first.
#  1. the plain C++ library (CMake; CUDA sources compiled when nvcc exists), C++ tests by ctest
#     at every CPU instruction-set level compiled in (scalar, AVX2, AVX-512, AVX-512 BF16); a level
#     this CPU cannot run is reported as skipped, with the features it lacks;
#  2. the same C++ tests, and the kernel and engine Python tests against an extension built
#     with AddressSanitizer + UndefinedBehaviorSanitizer (PYRUNTIME_SKIP_SANITIZERS=1 skips;
#     the whole-model runs at every level are left to ctest's cpu_engine_<level> there, and the
#     disassembly check and the bandwidth and FMA probes (unoptimized, instrumented code there)
#     to the regular build's pytest; of the architectures, a sliding-window model past its KV ring);
#  3. on a host with AVX-512, the C++ tests and the README's generation again on an emulated
#     AVX2-only CPU (qemu-user's AMD EPYC Zen 1 model: AVX2, FMA, F16C, no AVX-512), where an
#     AVX-512 instruction reached by mistake is an illegal instruction, as on such a machine;
#  4. the whole pytest suite on the regular build (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export PATH="$PATH:$PWD/.venv/bin"  # cmake and ninja: the system's, else the environment's (as setup.py)
log=build.log
: > "$log"
step() { echo "== [$((SECONDS / 60))m$((SECONDS % 60))s] $*"; }
fail() { tail -60 "$log"; exit 1; }

# build/ and build-asan/ are configured with the arguments setup.py uses (its cmake_build), so
# the kernels library that ./setup.sh built for the extension is the one the C++ tests link.
step "C++ library and tests (build/)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DPYRUNTIME_SANITIZE=OFF >> "$log" 2>&1 || fail
ninja -C build >> "$log" 2>&1 || fail
grep -E "pyruntime: (CPU|CUDA)" "$log" || true
(cd build && ctest --output-on-failure)
if grep -q "pyruntime: CUDA kernels ON" "$log"; then
  # The torch here has no CUDA, so the extension builds without it: at least compile the
  # bindings' CUDA parts (torch's c10/cuda headers through csrc/torch/cuda_guard.h).
  step "Torch bindings with PYRUNTIME_WITH_CUDA (syntax only)"
  incs=$($PY -c "import sysconfig, torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths() + [sysconfig.get_paths()['include']]))")
  for f in csrc/torch/model_spec.cpp csrc/torch/engine.cpp csrc/torch/bindings.cpp csrc/torch/ops.cpp; do
    g++ -std=c++17 -fsyntax-only -DPYRUNTIME_WITH_CUDA=1 -Icsrc/include -I/usr/local/cuda/include $incs "$f" >> "$log" 2>&1 || fail
  done
fi

if [ "${PYRUNTIME_SKIP_SANITIZERS:-0}" != 1 ]; then
  step "C++ tests under ASan + UBSan (build-asan/)"
  # -O0 with line tables: each instruction-set level's kernels are one translation unit, which
  # takes minutes to instrument with optimization (~6 min at -O1 -g against ~1.3 min here; the
  # tests run ~20 s longer).
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O0 -g1" \
    -DPYRUNTIME_SANITIZE=ON -DPYRUNTIME_CUDA=OFF >> "$log" 2>&1 || fail
  ninja -C build-asan test_kernels test_engine >> "$log" 2>&1 || fail
  (cd build-asan && ctest --output-on-failure)

  step "Python kernel and runtime tests against an ASan + UBSan extension (build-asan-py/, linking build-asan/)"
  PYRUNTIME_SANITIZE=1 MAX_JOBS=${MAX_JOBS:-2} $PY setup.py -q build_ext --build-temp build-asan-py/tmp \
    --build-lib build-asan-py/lib >> "$log" 2>&1 || fail
  so=$(ls build-asan-py/lib/pyruntime/_C*.so)
  LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
    ASAN_OPTIONS=detect_leaks=0:alloc_dealloc_mismatch=0 UBSAN_OPTIONS=halt_on_error=1 \
    PYRUNTIME_EXTENSION="$so" $PY -m pytest -q -p no:cacheprovider --durations=8 \
    tests/kernels tests/robustness/test_properties.py tests/runtime/test_engine.py \
    tests/runtime/test_bad_models.py tests/runtime/test_architectures.py \
    "tests/runtime/test_engine_api.py::test_prompt_chunks_of_several_rows_share_calls_and_equal_each_alone" \
    -k "not test_engine_greedy_matches_best_level and not test_no_instruction_outside_its_level and \
        not test_machine_probes and \
        (not test_architectures or (test_ring_cache_wraps and gemma2))"
fi

step "C++ tests and a generation on an emulated AVX2-only CPU (qemu-user -cpu EPYC-v1)"
qemu_version=$( (qemu-x86_64 --version 2> /dev/null || true) | sed -nE '1s/.*version ([0-9]+)\.([0-9]+).*/\1 \2/p')
if ! grep -qw avx512f /proc/cpuinfo; then
  echo "skipped: this CPU has no AVX-512, so the runs above were on an AVX2-only CPU already"
elif [ -z "$qemu_version" ]; then
  echo "skipped: no qemu-x86_64 (Debian: apt-get install qemu-user)"
elif [ "$(printf '%d%03d' $qemu_version)" -lt 7002 ]; then
  echo "skipped: qemu-x86_64 $qemu_version emulates no AVX2 (7.2 or later does)"
else
  # qemu notes the model's features its translator lacks (rdseed, sha-ni, ...) on each start.
  quiet() { "$@" 2>&1 | grep -v "TCG doesn't support"; return "${PIPESTATUS[0]}"; }
  emulate="timeout 900 qemu-x86_64 -cpu EPYC-v1"
  # ctest's own list (names, environments, commands), each run under the emulator: the avx512
  # levels must report themselves skipped (77), every other test must pass.
  (cd build && ctest --show-only=json-v1) | $PY -c "
import json, shlex, sys
for t in json.load(sys.stdin)['tests']:
    env = [e for p in t.get('properties', []) if p['name'] == 'ENVIRONMENT' for e in p['value']]
    print(t['name'], shlex.join(['env', *env, *'$emulate'.split(), *t['command']]))" > build/emulated_tests.txt
  ran=0
  while read -r name cmd; do
    if out=$(eval "quiet $cmd" < /dev/null); then rc=0; else rc=$?; fi
    case $rc:$name in
      0:* | 77:*avx512*) echo "  $name: $(tail -1 <<< "$out")"; ran=$((ran + 1)) ;;
      *) echo "$out" | tail -40; echo "  $name: FAILED (exit $rc) on the emulated AVX2-only CPU"; exit 1 ;;
    esac
  done < build/emulated_tests.txt
  [ "$ran" -gt 0 ] || { echo "no C++ tests ran on the emulated AVX2-only CPU"; exit 1; }
  out=$(quiet $emulate $PY -c "import pyruntime; print('kernels:', pyruntime.cpu_features()['isa'])
from pyruntime.cli import main; main(['generate', 'What is the capital of France?', '--max-new-tokens', '16'])") \
    || { echo "$out" | tail -40; exit 1; }
  echo "$out" | grep -v "mapping" || true  # (the progress bar's lines)
  grep -q "kernels: avx2" <<< "$out" && grep -q "Paris" <<< "$out" \
    || { echo "the generation on the emulated AVX2-only CPU did not run the avx2 kernels or name Paris"; exit 1; }
fi

step "pytest"
$PY -m pytest -q --durations=15 "$@"
step "done"
