// Items read as several streams at once: one stream per thread leaves memory idle between the
// hardware prefetcher's requests; several interleaved a few lines at a time keep more misses in
// flight.
#pragma once

#include <omp.h>

#include <cstdint>

namespace pyruntime::cpu::PYRUNTIME_ISA::detail {

constexpr int kSideBySide = 4;

// This thread's share [begin, end) of n items, in static order (call inside a parallel region).
inline void thread_share(int64_t n, int64_t& begin, int64_t& end) {
  const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
  begin = n * t / threads;
  end = n * (t + 1) / threads;
}

// Items [begin, end) as kSideBySide runs of `run` items side by side: group(first, run) for the
// items first + s * run (s < kSideBySide), first = begin .. begin + run - 1; then one(i) for
// each item left over.
template <typename Group, typename One>
inline void for_side_by_side(int64_t begin, int64_t end, Group&& group, One&& one) {
  const int64_t run = (end - begin) / kSideBySide;
  for (int64_t i = 0; i < run; ++i) group(begin + i, run);
  for (int64_t i = begin + kSideBySide * run; i < end; ++i) one(i);
}

}  // namespace pyruntime::cpu::PYRUNTIME_ISA::detail
