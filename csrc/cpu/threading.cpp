#include <omp.h>

#include "pyruntime/cpu_kernels.h"

namespace pyruntime::cpu {

namespace {
int g_default_threads = 0;
}

int num_threads() { return omp_get_max_threads(); }

void set_num_threads(int n) {
  if (g_default_threads == 0) g_default_threads = omp_get_max_threads();
  omp_set_num_threads(n > 0 ? n : g_default_threads);
}

}  // namespace pyruntime::cpu
