#include <omp.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <vector>

#include "pyruntime/cpu_kernels.h"
#include "pyruntime/vec.h"

namespace pyruntime::cpu {

namespace {
int g_default_threads = 0;

int64_t default_streaming_threshold() {
  const long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
  return (llc > 0 ? int64_t(llc) : int64_t(32) << 20) / 4 * 3;
}
std::atomic<int64_t> g_streaming_threshold{default_streaming_threshold()};
}  // namespace

int64_t streaming_store_threshold() { return g_streaming_threshold.load(std::memory_order_relaxed); }

void set_streaming_store_threshold(int64_t bytes) {
  g_streaming_threshold.store(bytes < 0 ? default_streaming_threshold() : bytes, std::memory_order_relaxed);
}

int num_threads() { return omp_get_max_threads(); }

void set_num_threads(int n) {
  if (g_default_threads == 0) g_default_threads = omp_get_max_threads();
  omp_set_num_threads(n > 0 ? n : g_default_threads);
}

double measure_read_bandwidth_gbps(int64_t bytes) {
  const int64_t n = std::max<int64_t>(bytes / int64_t(sizeof(float)), 4 * VecF::W) / (4 * VecF::W) * (4 * VecF::W);
  std::unique_ptr<float[]> buf(new float[n]);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) buf[i] = 1.0f;
  std::vector<double> times;
  volatile float sink = 0.0f;
  for (int pass = 0; pass < 7; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    float total = 0.0f;
#pragma omp parallel reduction(+ : total)
    {
      VecF a0 = VecF::zero(), a1 = VecF::zero(), a2 = VecF::zero(), a3 = VecF::zero();
#pragma omp for schedule(static)
      for (int64_t i = 0; i < n; i += 4 * VecF::W) {
        a0 = a0 + VecF::load(buf.get() + i);
        a1 = a1 + VecF::load(buf.get() + i + VecF::W);
        a2 = a2 + VecF::load(buf.get() + i + 2 * VecF::W);
        a3 = a3 + VecF::load(buf.get() + i + 3 * VecF::W);
      }
      total += (a0 + a1 + a2 + a3).reduce_sum();
    }
    sink = sink + total;
    if (pass > 0) times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  return double(n) * sizeof(float) / times[times.size() / 2] / 1e9;
}

}  // namespace pyruntime::cpu
