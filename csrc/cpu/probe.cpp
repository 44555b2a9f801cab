// Machine probes, built per instruction-set level (they read and multiply with the level's
// vectors): the read bandwidth and FMA throughput that the benchmarks compare kernels with, and
// which special product paths the level takes on this CPU.
#include "isa.h"
#include "linear_internal.h"
#include "vec.h"

namespace pyruntime::cpu::PYRUNTIME_ISA {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

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
    if (pass > 0) times.push_back(seconds_since(t0));
  }
  std::sort(times.begin(), times.end());
  return double(section) * streams * threads * sizeof(float) / times[times.size() / 2] / 1e9;
}

}  // namespace

// The faster of two read patterns: one sequential stream per thread, and eight interleaved
// ones (more lines in flight, which some machines need to reach their bandwidth).
double measure_read_bandwidth_gbps(int64_t bytes) {
  const int64_t unit = int64_t(4) * VecF::W * 8 * omp_get_max_threads();
  const int64_t n = std::max<int64_t>(bytes / int64_t(sizeof(float)), unit) / unit * unit;
  std::unique_ptr<float[]> buf(new float[n]);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) buf[i] = 1.0f;
  return std::max(read_gbps(buf.get(), n, 1), read_gbps(buf.get(), n, 8));
}

double measure_fma_gflops() {
  constexpr int kChains = 12;  // independent accumulators: enough to cover the FMA latency
  const int64_t iters = 20000000 / VecF::W;
  std::vector<double> times;
  volatile float sink = 0.0f;
  for (int pass = 0; pass < 5; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    float total = 0.0f;
#pragma omp parallel reduction(+ : total)
    {
      VecF a[kChains];
      for (int i = 0; i < kChains; ++i) a[i] = VecF::set1(0.001f * i);
      const VecF b = VecF::set1(0.999f), c = VecF::set1(1e-4f);
      for (int64_t i = 0; i < iters; ++i)
        for (int j = 0; j < kChains; ++j) a[j] = VecF::fma(a[j], b, c);
      for (int i = 0; i < kChains; ++i) total += a[i].reduce_sum();
    }
    sink = sink + total;
    times.push_back(seconds_since(t0));
  }
  std::sort(times.begin(), times.end());
  return double(kChains) * iters * VecF::W * omp_get_max_threads() / times[times.size() / 2] / 1e9;
}

KernelPaths kernel_paths() {
  KernelPaths p;
#if defined(PYRUNTIME_VEC_AVX512)
  p.int8_vnni = detail::vnni::available();
#if defined(__linux__)
  p.bf16_amx = detail::amx::available();
#endif
#endif
  return p;
}

}  // namespace pyruntime::cpu::PYRUNTIME_ISA
