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

// 3/4 of the last-level cache this process can count on: the reported size, but at most
// 4x the threads' own L2s. A big server's L3 is sliced and shared by every core of the chip
// (and, in a cloud guest, by other guests): on a 2-vCPU guest reporting 480 MiB of L3, reads
// ran at L3 speed only up to 64 MiB and at DRAM speed from 128 MiB, and rms_norm calls moving
// 64-128 MiB (cold outputs) reached 54-67 % of the read bandwidth with ordinary stores, 88-96 %
// streamed.
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

void set_num_threads(int n) {
  if (g_default_threads == 0) g_default_threads = omp_get_max_threads();
  omp_set_num_threads(n > 0 ? n : g_default_threads);
}

namespace {

// GB/s of one read (median pass) of buf[0..n) by all threads, each thread's share read as
// `streams` contiguous sections interleaved four vectors at a time (what does not fill whole
// sections is left out of the timing, never read past).
double read_gbps(const float* buf, int64_t n, int streams) {
  const int threads = omp_get_max_threads();
  const int64_t share = n / threads;
  const int64_t section = share / streams / (4 * VecF::W) * (4 * VecF::W);
  std::vector<double> times;
  volatile float sink = 0.0f;
  for (int pass = 0; pass < 7; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    float total = 0.0f;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
      const float* base = buf + share * omp_get_thread_num();
      VecF a0 = VecF::zero(), a1 = VecF::zero(), a2 = VecF::zero(), a3 = VecF::zero();
      for (int64_t i = 0; i < section; i += 4 * VecF::W)
        for (int s = 0; s < streams; ++s) {
          const float* p = base + s * section + i;
          a0 = a0 + VecF::load(p);
          a1 = a1 + VecF::load(p + VecF::W);
          a2 = a2 + VecF::load(p + 2 * VecF::W);
          a3 = a3 + VecF::load(p + 3 * VecF::W);
        }
      total += (a0 + a1 + a2 + a3).reduce_sum();
    }
    sink = sink + total;
    if (pass > 0) times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  return double(section) * streams * threads * sizeof(float) / times[times.size() / 2] / 1e9;
}

}  // namespace

// The faster of two read patterns: one sequential stream per thread, and eight interleaved
// ones (more lines in flight; on the build machine 24-27 GB/s against 18-19 for one stream).
double measure_read_bandwidth_gbps(int64_t bytes) {
  const int64_t unit = int64_t(4) * VecF::W * 8 * omp_get_max_threads();
  const int64_t n = std::max<int64_t>(bytes / int64_t(sizeof(float)), unit) / unit * unit;
  std::unique_ptr<float[]> buf(new float[n]);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) buf[i] = 1.0f;
  return std::max(read_gbps(buf.get(), n, 1), read_gbps(buf.get(), n, 8));
}

}  // namespace pyruntime::cpu
