// The C++ tests run once per instruction-set level (ctest sets PYRUNTIME_CPU_ISA). A level this
// CPU cannot run is skipped (ctest's SKIP_RETURN_CODE 77) with the missing features named,
// never executed; an unknown level name is an error.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

#include "pyruntime/cpu_kernels.h"

inline void run_at_active_isa_or_skip(const char* binary) {
  using namespace pyruntime::cpu;
  if (const char* env = std::getenv("PYRUNTIME_CPU_ISA"); env && *env) {
    try {
      const std::string missing = isa_missing_features(parse_isa(env));
      if (!missing.empty()) {
        std::printf("SKIPPED: this CPU cannot run the %s kernels (it lacks %s)\n", env, missing.c_str());
        std::exit(77);
      }
    } catch (const pyruntime::InvalidArgument& e) {
      std::printf("FAIL PYRUNTIME_CPU_ISA=%s: %s\n", env, e.what());
      std::exit(2);
    }
  }
  std::printf("%s: %s kernels (this CPU's best: %s)\n", binary, isa_name(active_isa()), isa_name(best_isa()));
}
