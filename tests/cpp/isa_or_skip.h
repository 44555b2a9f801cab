// The C++ tests run once per instruction-set level (ctest sets PYRUNTIME_CPU_ISA). A level this
// CPU cannot run is skipped (ctest's SKIP_RETURN_CODE 77) with the missing features named,
// never executed.
#pragma once

#include <cstdio>
#include <cstdlib>

#include "pyruntime/cpu_kernels.h"

inline void run_at_active_isa_or_skip(const char* binary) {
  using namespace pyruntime::cpu;
  try {
    std::printf("%s: %s kernels (this CPU's best: %s)\n", binary, isa_name(active_isa()), isa_name(best_isa()));
  } catch (const pyruntime::InvalidArgument& e) {
    std::printf("SKIPPED: %s\n", e.what());
    std::exit(77);
  }
}
