// The CPU engine: a whole forward step of a Llama-family decoder in one call, with the
// weights resident, every buffer allocated once, and one OpenMP parallel region per call
// whose phases are separated by barriers (no fork/join per op).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "pyruntime/common.h"
#include "pyruntime/cpu_isa.h"
#include "pyruntime/engine_shape.h"

namespace pyruntime::cpu {

// How a weight matrix is stored; each Matrix names its own, and the products dispatch on it
// (and on the instruction-set level) at run time.
enum class WeightFormat { Float32, BFloat16, Int8 };

const char* weight_format_name(WeightFormat f);

// A weight matrix [rows, cols] as stored (`format`): float32, bfloat16, or int8 with one float32
// scale per group of `group` columns (weight = q * scale; group a power of two and a
// multiple of 16 that divides cols). int8 rows are either plain (block_rows 1: q [rows, cols],
// scales [rows, cols / group]) or interleaved in blocks of block_rows (4) rows as
// pack_int8_rows writes them (q [rows / 4, cols / group, 4, group], scales
// [rows / 4, cols / group, 4]): a product then reads one ascending stream per block.
struct Matrix {
  WeightFormat format = WeightFormat::Float32;
  const void* data = nullptr;
  const float* scales = nullptr;  // int8 only
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t group = 0;
  int64_t block_rows = 1;  // int8 only: 1 or kInt8BlockRows
};

// Rows per block of the interleaved int8 layout.
constexpr int64_t kInt8BlockRows = 4;

struct EngineLayer {
  const float* attn_norm = nullptr;  // [H]
  Matrix qkv;                        // [(Hq + 2 Hkv) D, H]: q rows, k rows, v rows
  const float* qkv_bias = nullptr;   // [(Hq + 2 Hkv) D] or null
  Matrix o;                          // [H, Hq D]
  const float* o_bias = nullptr;     // [H] or null
  const float* mlp_norm = nullptr;   // [H]
  Matrix gate_up;                    // [2 I, H]: gate rows, then up rows
  Matrix down;                       // [H, I]
  // Attention limited to the last sliding_window positions; 0: the whole sequence. The engine
  // refuses other values for now (InvalidArgument), so no model runs with a window ignored.
  int64_t sliding_window = 0;
};

struct EngineSpec : EngineShape {
  DType kv_dtype = DType::Float32;              // float32 or bfloat16
  int threads = 0;          // 0: the OpenMP default
  const float* cos_sin = nullptr;  // [max_seq, rot_dim]: cos half, then sin half
  Matrix embed;                    // [vocab, H]
  std::vector<EngineLayer> layers;
  const float* final_norm = nullptr;  // [H]
  Matrix lm_head;                     // [vocab, H]
};

// The group size of int8 weights with `cols` input features: 64, else 32 (InvalidArgument
// when neither divides cols).
int64_t int8_group_size(int64_t cols);

// Weight-only int8 quantisation, as llama.cpp's Q8_0: for every group of `group` columns of
// every row, scale = absmax / 127 and q = round(w / scale) (half to even; 0 where scale is 0).
// \param w [rows, cols] float32; \param q [rows, cols]; \param scales [rows, cols / group]
void quantize_int8(const float* w, int64_t rows, int64_t cols, int64_t group, int8_t* q, float* scales);

// quantize_int8's plain rows interleaved in blocks of kInt8BlockRows (rows must be a multiple of
// it): for every block, for every group, the block's rows' `group` values one row after the
// other (and the scales likewise). Set the Matrix's block_rows to kInt8BlockRows for them.
void pack_int8_rows(const int8_t* q, const float* scales, int64_t rows, int64_t cols, int64_t group,
                    int8_t* q_out, float* scales_out);

// The phases of a step, as the profiler names them.
enum class Op : int {
  Embed, AttnNorm, QKV, RopeCache, Attention, OProj, MlpNorm, GateUpSilu, Down, FinalNorm, LMHead,
  Count
};
const char* op_name(Op op);

struct ProfileEvent {
  int call;   // forward calls since profiling was switched on: 0, 1, ...
  int layer;  // -1 for the ops outside the layers
  Op op;
  int64_t begin_ns, end_ns;  // steady clock
};

class Engine {
 public:
  // Checks every size and pointer of spec (InvalidArgument naming the field) and allocates
  // the activations for spec.max_tokens tokens. The weights stay owned by the caller.
  explicit Engine(EngineSpec spec);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Runs n tokens through the model. Token i sits at position positions[i] of cache row
  // rows[i]: its k and v are written there, and it attends to positions [0, positions[i]]
  // of that row (positions below it must already hold keys, from earlier calls or from
  // tokens of this call). Writes float32 logits [n - first_logit, vocab] of tokens
  // first_logit..n-1.
  // \param k_cache, v_cache [num_layers, cache_rows, Hkv, max_seq, D] of spec.kv_dtype
  void forward(const int64_t* tokens, const int64_t* positions, const int64_t* rows, int64_t n,
               void* k_cache, void* v_cache, int64_t cache_rows, float* logits,
               int64_t first_logit);

  const EngineSpec& spec() const;
  int threads() const;
  // The instruction-set level whose kernels this engine runs (the active one when it was built).
  Isa isa() const;
  // Timers around every phase (on thread 0, after the phase's barrier); off by default.
  // Switching them on clears the events recorded so far.
  void set_profiling(bool on);
  // The events of every forward call since profiling was last switched on.
  const std::vector<ProfileEvent>& profile() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace pyruntime::cpu
