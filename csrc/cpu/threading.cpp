#include <omp.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>

#include "pyruntime/cpu_kernels.h"

namespace pyruntime::cpu {

namespace {
int g_default_threads = 0;

// 3/4 of the last-level cache this process can count on: the reported size, but at most
// 4x the threads' own L2s. A big server's L3 is sliced and shared by every core of the chip
// (and, in a cloud guest, by other guests), so a few-vCPU guest may report the whole chip's L3
// and still read at DRAM speed well below that size (benchmarks/README.md has the figures).
int64_t default_streaming_threshold() {
  const long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
  const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
  int64_t usable = llc > 0 ? int64_t(llc) : int64_t(32) << 20;
  if (l2 > 0) usable = std::min(usable, int64_t(l2) * 4 * std::max(1, omp_get_max_threads()));
  return usable / 4 * 3;
}
std::atomic<int64_t> g_streaming_threshold{default_streaming_threshold()};
}  // namespace

int64_t streaming_store_threshold() { return g_streaming_threshold.load(std::memory_order_relaxed); }

void set_streaming_store_threshold(int64_t bytes) {
  g_streaming_threshold.store(bytes < 0 ? default_streaming_threshold() : bytes, std::memory_order_relaxed);
}

int num_threads() { return omp_get_max_threads(); }

bool release_openmp_threads() { return omp_pause_resource_all(omp_pause_soft) == 0; }

void set_num_threads(int n) {
  if (g_default_threads == 0) g_default_threads = omp_get_max_threads();
  omp_set_num_threads(n > 0 ? n : g_default_threads);
}

}  // namespace pyruntime::cpu
