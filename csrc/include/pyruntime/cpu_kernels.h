// CPU kernels: raw pointers, sizes and strides (in elements), nothing of torch.
// T is float or bf16; all arithmetic is float32. Callers check shapes and bounds
// (the torch bindings in csrc/torch/, or the C++ tests and benchmarks). Each kernel runs the
// build of the active instruction-set level (cpu_isa.h).
#pragma once

#include <cstdint>

#include "pyruntime/common.h"
#include "pyruntime/cpu_isa.h"

namespace pyruntime::cpu {

using pyruntime::HeadsView;

// Threads the kernels use (OpenMP); set_num_threads(0) restores the default.
int num_threads();
void set_num_threads(int n);
// Releases the OpenMP worker threads the calling thread has started (omp_pause_resource_all,
// soft): a thread handing the engine to another should call it, since libgomp throttles the
// spin-waits of every team (each barrier then sleeps: decode steps ~1.8x slower here) while
// more OpenMP threads exist than CPUs. Returns false where the runtime cannot.
bool release_openmp_threads();

// Out-of-place kernels write their output with streaming stores (no write-allocate read of
// each output line, caches left alone) when one call moves at least this many bytes: its
// output would be evicted from the last-level cache before a consumer could read it back.
// The default is 3/4 of the last-level cache (32 MiB where the size is unknown), capped at
// 3/4 of 4x the threads' L2 caches (a thread's usable share of a big shared L3);
// set_streaming_store_threshold(-1) restores it, 0 streams always (tests of both paths).
int64_t streaming_store_threshold();
void set_streaming_store_threshold(int64_t bytes);
inline bool stream_output(int64_t call_bytes) { return call_bytes >= streaming_store_threshold(); }

// The most tokens one product call runs on the row tiles (each weight row read once for all of
// them, every token's sums in the same order whatever the batch): decode batches. Longer calls
// (prefill chunks) take the packed GEMM, whose sums round differently.
constexpr int64_t kMaxRowTileTokens = 16;
// Prompt chunks over this many tokens take the GEMM (their products read each weight panel
// once for every token; shorter ones, the row tiles: cheaper for a few tokens).
constexpr int64_t kPromptGemmTokens = 8;

// How gqa_decode_attention splits each sequence's keys across threads. A sequence's
// split length depends on its own length only (never on the rest of the batch), so its
// result is the same alone or batched.
struct DecodePlan {
  int64_t target_items;  // work items wanted per sequence (over all its KV heads)
  int64_t max_splits;    // splits of the sequence that has the most
  int64_t threads;       // threads the workspace has scratch space for
};
}  // namespace pyruntime::cpu

// A level's own sources (csrc/cpu/, PYRUNTIME_ISA defined) declare the kernels in their
// namespace instead (csrc/cpu/isa.h).
#ifndef PYRUNTIME_ISA
namespace pyruntime::cpu {
#include "pyruntime/cpu_kernels.inc"
}  // namespace pyruntime::cpu
#endif
