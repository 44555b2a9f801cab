// The CUDA engine: the CPU engine's whole forward step (engine.h) on the GPU, in bfloat16
// or float16 (weights, activations, KV cache; float32 accumulation and logits), with the
// weights resident, every buffer allocated once, and decode steps replayed from CUDA graphs.
// Framework-free: device pointers in, device pointers out.
//
// Compiled in CI (nvcc 13, sm_80/sm_90; the CI machines have no GPU). Its tests
// (tests/runtime/test_engine.py) run where torch sees a CUDA device; they passed on an H100.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "pyruntime/common.h"
#include "pyruntime/engine_shape.h"

namespace pyruntime::cuda {

// Device pointers of one layer, every tensor in the engine's dtype.
struct EngineLayer {
  const void* attn_norm = nullptr;  // [H]
  const void* qkv = nullptr;        // [(Hq + 2 Hkv) D, H]: q rows, k rows, v rows
  const void* qkv_bias = nullptr;   // [(Hq + 2 Hkv) D] or null
  const void* o = nullptr;          // [H, Hq D]
  const void* o_bias = nullptr;     // [H] or null
  const void* mlp_norm = nullptr;   // [H]
  const void* gate_up = nullptr;    // [2 I, H]: gate rows, then up rows
  const void* down = nullptr;       // [H, I]
};

struct EngineSpec : EngineShape {
  DType dtype = DType::BFloat16;  // BFloat16 or Float16
  int device = 0;                 // the CUDA device of every pointer
  const float* cos_sin = nullptr;  // [max_seq, rot_dim] float32: cos half, then sin half
  const void* embed = nullptr;     // [vocab, H]
  std::vector<EngineLayer> layers;
  const void* final_norm = nullptr;  // [H]
  const void* lm_head = nullptr;     // [vocab, H]
};

// Every entry point (construction, forward, destruction) makes spec.device current for its
// duration and restores the caller's current device afterwards.
class Engine {
 public:
  // Checks the sizes (InvalidArgument naming the field) and allocates the device buffers.
  explicit Engine(EngineSpec spec);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // As cpu::Engine::forward, enqueued on `stream`: tokens, positions and rows are host
  // arrays (checked, then copied to the device); k_cache and v_cache are device tensors
  // [num_layers, cache_rows, Hkv, max_seq, D] of the engine's dtype; logits a device float32
  // [n - first_logit, vocab]. Calls of at most 16 tokens are captured into a CUDA graph the
  // first time they are seen (per n, first_logit, cache_rows and cache addresses) and replayed
  // afterwards; at most 32 graphs are kept, the least recently used destroyed first. Their
  // logits pass through an engine-owned buffer, so `logits` may be a new tensor every call.
  void forward(const int64_t* tokens, const int64_t* positions, const int64_t* rows, int64_t n,
               void* k_cache, void* v_cache, int64_t cache_rows, float* logits, int64_t first_logit,
               cudaStream_t stream);

  const EngineSpec& spec() const;
  void set_cuda_graphs(bool on);  // on by default
  int64_t graphs() const;         // graphs held now (at most 32)

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace pyruntime::cuda
