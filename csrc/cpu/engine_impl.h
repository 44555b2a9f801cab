// The state of a CPU engine that every instruction-set level's step shares (buffers,
// profiling), and each level's factory. Engine (engine_spec.cpp) checks the spec and builds
// the step of the active level; csrc/cpu/engine.cpp is that step, compiled once per level.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "pyruntime/cpu_isa.h"
#include "pyruntime/cpu_kernels.h"
#include "pyruntime/engine.h"

namespace pyruntime::cpu {

struct Engine::Impl {
  Isa isa = Isa::Scalar;  // the level whose step this is
  EngineSpec spec;
  int threads = 1;
  int64_t qkv_dim = 0, q_dim = 0, kv_dim = 0, chunk = 0;
  float scale = 1.0f;
  // Activations, float32, for spec.max_tokens tokens.
  std::vector<float> resid, xn, qkv, attn, act, tmp;  // tmp: per-thread gate and up slices
  std::vector<float> post;  // a projection's output before its post-norm [max_tokens, H] (or empty)
  std::vector<float> xn_own;  // per-thread normed rows of decode calls [threads, kMaxRowTileTokens, H]
  std::vector<float> pack;                            // per-thread packed weight panel (GEMM)
  int64_t pack_floats = 0;
  // A GEMM's activations quantised to 8 bits (share_acts in engine.cpp), for activation groups of
  // 32 and of 256, each [max_tokens, q8_cols] values, scales and sums of 16; empty where the level
  // has no integer GEMM.
  std::vector<int8_t> q8_values;
  std::vector<float> q8_scales;
  std::vector<int16_t> q8_sums;
  int64_t q8_cols = 0;
  // The same in 16 bits, groups of 32 (a prompt's where spec.prompt_bits is 16).
  std::vector<int16_t> q16_values;
  std::vector<float> q16_scales;
  std::vector<int32_t> q16_sums;
  std::vector<int32_t> seq_lens;
  // Sliding windows: the distinct windows of the layers, each layer's index into them (-1: the
  // whole sequence), and per window and token the first key attended [windows, max_tokens].
  std::vector<int64_t> windows;
  std::vector<int> layer_window;
  std::vector<int32_t> first_keys;
  // KV cache: positions each layer keeps per sequence (kv_slots), and where each layer's part
  // of the cache starts, in slots of one row (Hkv * D values each): layer l's part starts
  // at cache_rows * Hkv * D * slot_offsets[l].
  std::vector<int64_t> slots, slot_offsets;
  std::vector<float> attn_ws;
  std::vector<float> prefill_ws;  // causal prefill attention (max_tokens > kMaxRowTileTokens)
  // A call's attention, by runs of its tokens [begin, end): a prompt chunk of one cache row
  // over kMaxRowTileTokens tokens (causal), or tokens attended one by one (run's segments).
  struct Span {
    int64_t begin, end;
    bool causal;
  };
  std::vector<Span> spans;  // (max_tokens reserved)
  bool profiling = false;
  int calls = 0;  // forward calls profiled since profiling was switched on
  std::vector<ProfileEvent> events;

  explicit Impl(EngineSpec s) : spec(std::move(s)) {}
  virtual ~Impl() = default;
  virtual void run(const int64_t* tokens, const int64_t* positions, const int64_t* rows, int64_t n,
                   void* k_cache, void* v_cache, int64_t cache_rows, float* logits,
                   int64_t first_logit, bool prompt, const int64_t* logit_tokens) = 0;
};


// Each level's step for a checked spec, its buffers allocated.
#define PYRUNTIME_DECLARE_ENGINE_FACTORY(E, ns) \
  namespace ns {                                        \
  std::unique_ptr<Engine::Impl> make_engine_impl(EngineSpec spec); \
  void matrix_product(float* y, const float* x, int64_t tokens, const Matrix& m, bool int8_activations, \
                      int gemm_bits); \
  int prompt_bits_run(int asked); \
  }
PYRUNTIME_FOR_EACH_ISA(PYRUNTIME_DECLARE_ENGINE_FACTORY)
#undef PYRUNTIME_DECLARE_ENGINE_FACTORY

}  // namespace pyruntime::cpu
