// Shared harness of the C++ benchmark binaries: median latency over repetitions
// (warm-up excluded), bytes moved -> GB/s, and the fraction of this machine's read
// bandwidth measured in the same run, plus its float32 FMA rate (the compute ceiling).
// A case whose data fits in the caches rotates over enough copies of its inputs that
// every call reads from memory ("ws MB" is the working set over all copies).
// Usage of every binary: bench_X [--json FILE] [--quick] [--stream always|never]
// (--stream overrides the kernels' choice of streaming stores for large outputs)
#pragma once

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "pyruntime/common.h"
#include "pyruntime/cpu_kernels.h"

#ifndef PYRUNTIME_GIT_COMMIT
#define PYRUNTIME_GIT_COMMIT "unknown"
#endif

namespace bench {

struct Case {
  std::string name;
  double bytes;                     // bytes that must move between memory and the cores per call
  int copies;                       // input copies the calls rotate over
  std::function<void(int)> run;     // runs the op on copy i
};

struct Result {
  std::string name;
  double median_us, gbps, fraction, working_set_mb;
};

// Copies of a case's inputs needed for a working set beyond the caches: twice the last-level
// cache, and at least 128 MiB.
inline int copies_for(double bytes) {
  const double want = std::max(128.0 * (1 << 20), 2.0 * double(sysconf(_SC_LEVEL3_CACHE_SIZE)));
  return static_cast<int>(std::min(256.0, std::max(1.0, std::ceil(want / bytes))));
}

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Median seconds per call: 3 warm-ups, then repetitions until ~min_s has passed (>= 5).
inline double median_seconds(const std::function<void()>& fn, double min_s) {
  for (int i = 0; i < 3; ++i) fn();
  std::vector<double> times;
  const double start = now_s();
  while (times.size() < 5 || (now_s() - start < min_s && times.size() < 1000)) {
    const double t0 = now_s();
    fn();
    times.push_back(now_s() - t0);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// float32 multiply-adds per second over all threads, G/s.
inline double measure_fma_gflops() { return pyruntime::cpu::measure_fma_gflops(); }

template <typename T>
std::vector<T> random_buffer(size_t n, float scale = 1.0f, unsigned seed = 7) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<T> v(n);
  for (auto& x : v) x = pyruntime::from_float<T>(dist(rng));
  return v;
}

// `copies` buffers of n elements each: copy 0 random, the others its duplicates.
template <typename T>
std::shared_ptr<std::vector<std::vector<T>>> replicated(size_t n, int copies, float scale = 1.0f,
                                                        unsigned seed = 7) {
  auto v = std::make_shared<std::vector<std::vector<T>>>(copies, random_buffer<T>(n, scale, seed));
  return v;
}

inline int run(const char* binary, std::vector<Case>& cases, int argc, char** argv) {
  const char* json_path = nullptr;
  const char* only = nullptr;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
    else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    else if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--stream") && i + 1 < argc && !std::strcmp(argv[i + 1], "always"))
      pyruntime::cpu::set_streaming_store_threshold(0), ++i;
    else if (!std::strcmp(argv[i], "--stream") && i + 1 < argc && !std::strcmp(argv[i + 1], "never"))
      pyruntime::cpu::set_streaming_store_threshold(INT64_MAX), ++i;
    else {
      std::fprintf(stderr, "usage: %s [--json FILE] [--quick] [--stream always|never] [--only TEXT]\n", binary);
      return 2;
    }
  }
  const double bw = pyruntime::cpu::measure_read_bandwidth_gbps();
  const double fma = measure_fma_gflops();
  std::printf("%s  commit %s  isa %s  threads %d  read bandwidth %.1f GB/s  fp32 FMA %.1f G/s\n",
              binary, PYRUNTIME_GIT_COMMIT, pyruntime::cpu::isa_name(pyruntime::cpu::active_isa()), omp_get_max_threads(), bw, fma);
  const int64_t stream_at = pyruntime::cpu::streaming_store_threshold();
  std::printf("last-level cache %.1f MiB; streaming stores from %s per call\n",
              double(sysconf(_SC_LEVEL3_CACHE_SIZE)) / (1 << 20),
              stream_at == INT64_MAX ? "never" : (std::to_string(stream_at >> 20) + " MiB").c_str());
  std::printf("%-56s %8s %11s %9s %7s\n", "case", "ws MB", "median us", "GB/s", "of bw");
  std::vector<Result> results;
  for (auto& c : cases) {
    if (only && c.name.find(only) == std::string::npos) continue;
    int i = 0;
    const double t = median_seconds([&] { c.run(i++ % c.copies); }, quick ? 0.05 : 0.5);
    const double gbps = c.bytes / t / 1e9, ws = c.bytes * c.copies / (1 << 20);
    results.push_back({c.name, t * 1e6, gbps, gbps / bw, ws});
    std::printf("%-56s %8.0f %11.1f %9.1f %6.0f%%\n", c.name.c_str(), ws, t * 1e6, gbps, 100.0 * gbps / bw);
    std::fflush(stdout);
  }
  if (json_path) {
    FILE* f = std::fopen(json_path, "w");
    if (!f) {
      std::fprintf(stderr, "cannot write %s\n", json_path);
      return 1;
    }
    std::fprintf(f, "{\"binary\": \"%s\", \"commit\": \"%s\", \"isa\": \"%s\", \"threads\": %d, "
                 "\"read_bandwidth_gbps\": %.3f, \"fma_gflops\": %.3f, \"results\": [", binary,
                 PYRUNTIME_GIT_COMMIT, pyruntime::cpu::isa_name(pyruntime::cpu::active_isa()), omp_get_max_threads(), bw, fma);
    for (size_t i = 0; i < results.size(); ++i)
      std::fprintf(f, "%s{\"case\": \"%s\", \"working_set_mb\": %.1f, \"median_us\": %.3f, "
                   "\"gbps\": %.3f, \"fraction_of_bw\": %.4f}", i ? ", " : "", results[i].name.c_str(),
                   results[i].working_set_mb, results[i].median_us, results[i].gbps, results[i].fraction);
    std::fprintf(f, "]}\n");
    std::fclose(f);
  }
  return 0;
}

// Model shapes the benchmarks use (decode of real models).
struct ModelShape {
  const char* name;
  int64_t hidden, num_q_heads, num_kv_heads, head_dim, inter;
};
inline const ModelShape kModels[] = {
    {"smollm2-135m", 576, 9, 3, 64, 1536},
    {"llama3-8b", 4096, 32, 8, 128, 14336},
};

inline const char* dtype_label(float) { return "f32"; }
inline const char* dtype_label(pyruntime::bf16) { return "bf16"; }

}  // namespace bench
