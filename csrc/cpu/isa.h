// The start of every source of one instruction-set level. Those sources are compiled only
// through kernels_<isa>.cpp, which defines PYRUNTIME_ISA (the level's namespace) and
// PYRUNTIME_ISA_ID (its Isa enumerator), includes this header, and only then switches the
// compiler's target to the level: everything included here (the standard library, the shared
// types) stays baseline x86-64, so no out-of-line copy of it that the linker may share across
// levels holds an instruction another CPU lacks.
#pragma once

#ifndef PYRUNTIME_ISA
#error "csrc/cpu kernel sources are compiled through csrc/cpu/kernels_<isa>.cpp"
#endif

#include <immintrin.h>
#include <omp.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "engine_impl.h"
#include "pyruntime/common.h"
#include "pyruntime/cpu_isa.h"
#include "pyruntime/cpu_kernels.h"
#include "pyruntime/dispatch.h"
#include "pyruntime/engine.h"
#include "pyruntime/engine_shape.h"

namespace pyruntime::cpu::PYRUNTIME_ISA {
#include "pyruntime/cpu_kernels.inc"
}  // namespace pyruntime::cpu::PYRUNTIME_ISA
