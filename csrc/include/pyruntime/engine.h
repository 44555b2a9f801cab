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
#include "pyruntime/model_fields.h"

namespace pyruntime::cpu {

// How a weight matrix is stored; each Matrix names its own, and the products dispatch on it
// (and on the instruction-set level) at run time.
// - Float32, BFloat16: dense rows.
// - Int8: the runtime's own weight-only int8 (float32 scales apart from the values; below).
// - Q4_0 .. Q6_K: GGUF's (ggml's) block formats, rows of whole blocks exactly as a GGUF file
//   stores them (block_q4_0 etc. of ggml-common.h): 32 values per block (Q4_0, Q4_1, Q5_0, Q5_1,
//   Q8_0) or 256 (the k-quants Q2_K .. Q6_K), each block holding its scales.
// - F16: GGUF's float16 matrices, as bytes, in "blocks" of 32 values (64 bytes) for the same
//   machinery (cols a multiple of 32; pyruntime widens other F16 matrices to float32).
enum class WeightFormat { Float32, BFloat16, Int8, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, F16 };

// Each format's name, values and bytes per block (dense formats and Int8: 1 value of 4, 2 or 1
// bytes; Int8's scales are apart; the GGUF formats' sizes are ggml-common.h's), and the values
// per group of 8-bit activations in its integer products (csrc/cpu/linear_q8.h; 0: none, its
// products take float32 activations). In WeightFormat's order.
struct FormatInfo {
  const char* name;
  int64_t block_values, block_bytes, activation_group;
};
inline constexpr FormatInfo kFormats[] = {
    {"float32", 1, 4, 0},    {"bfloat16", 1, 2, 0},   {"int8", 1, 1, 0},       {"q4_0", 32, 18, 32},
    {"q4_1", 32, 20, 32},    {"q5_0", 32, 22, 0},     {"q5_1", 32, 24, 0},     {"q8_0", 32, 34, 32},
    {"q2_k", 256, 84, 0},    {"q3_k", 256, 110, 0},   {"q4_k", 256, 144, 256}, {"q5_k", 256, 176, 256},
    {"q6_k", 256, 210, 256}, {"f16", 32, 64, 0},
};
inline constexpr int64_t kNumFormats = sizeof(kFormats) / sizeof(kFormats[0]);
static_assert(kNumFormats == static_cast<int64_t>(WeightFormat::F16) + 1, "kFormats: one row per WeightFormat");
constexpr int64_t format_activation_group(WeightFormat f) { return kFormats[static_cast<int>(f)].activation_group; }

const char* weight_format_name(WeightFormat f);  // "unknown" outside the enum
// Values and bytes per block (InvalidArgument outside the enum).
int64_t format_block_values(WeightFormat f);
int64_t format_block_bytes(WeightFormat f);
// Bytes of one row of `cols` values (cols a multiple of the block).
inline int64_t format_row_bytes(WeightFormat f, int64_t cols) {
  return cols / format_block_values(f) * format_block_bytes(f);
}

// A weight matrix [rows, cols] as stored (`format`): float32, bfloat16, a GGUF block format
// (rows of format_row_bytes(format, cols) bytes), or int8 with one float32 scale per group of
// `group` columns (weight = q * scale; group a power of two and a
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

  // Rows [r0, r0 + n) of this matrix, in its own storage (r0 and n multiples of block_rows).
  Matrix rows_view(int64_t r0, int64_t n) const;
};

// The MLP's gate activation: down(act(gate x) * up x).
enum class Activation { SiLU, GeluTanh };
const char* activation_name(Activation a);

// Positions a layer's KV cache keeps per sequence: max_seq for whole-sequence attention (window 0);
// with a sliding window, a ring of window + max_tokens - 1 positions (a call's tokens of one
// sequence, at most max_tokens consecutive positions, then never overwrite keys that one of
// them attends) rounded up to kKvSlotAlign, or max_seq where that is not less. Position p sits
// in slot p % slots.
constexpr int64_t kKvSlotAlign = 64;  // the attention kernels' key block: a block never wraps
inline int64_t kv_slots(int64_t sliding_window, int64_t max_seq, int64_t max_tokens) {
  if (sliding_window <= 0) return max_seq;
  const int64_t ring = (sliding_window + max_tokens - 1 + kKvSlotAlign - 1) / kKvSlotAlign * kKvSlotAlign;
  return ring < max_seq ? ring : max_seq;
}

// Rows per block of the interleaved int8 layout.
constexpr int64_t kInt8BlockRows = 4;

// One decoder block as the engine reads it (its attributes: model_fields.h): each matrix in its
// own format, each vector a float32 pointer (null where an optional one is absent).
struct EngineLayer {
#define PYRUNTIME_LAYER_MATRIX(name, rows, cols) Matrix name;
#define PYRUNTIME_LAYER_VECTOR(name, ...) const float* name = nullptr;
#define PYRUNTIME_LAYER_COUNT(name) int64_t name = 0;
  PYRUNTIME_LAYER_MATRICES(PYRUNTIME_LAYER_MATRIX)
  PYRUNTIME_LAYER_VECTORS(PYRUNTIME_LAYER_VECTOR)
  PYRUNTIME_LAYER_OPTIONAL_VECTORS(PYRUNTIME_LAYER_VECTOR)
  PYRUNTIME_LAYER_TABLES(PYRUNTIME_LAYER_VECTOR)  // [max_seq, rot_dim]
  PYRUNTIME_LAYER_COUNTS(PYRUNTIME_LAYER_COUNT)
#undef PYRUNTIME_LAYER_MATRIX
#undef PYRUNTIME_LAYER_VECTOR
#undef PYRUNTIME_LAYER_COUNT
};

struct EngineSpec : EngineShape {
  DType kv_dtype = DType::Float32;              // float32 or bfloat16
  int threads = 0;          // 0: the OpenMP default
  // Decode products (calls not marked as a prompt) of Q4_0, Q4_1, Q8_0, Q4_K, Q5_K and Q6_K
  // matrices in integers against activations quantised to 8 bits per block
  // (csrc/cpu/linear_q8.h); false: float32 activations.
  bool int8_activations = true;
  // The activations of a prompt's products with those matrices, where the active level has the
  // integer GEMM for them (csrc/cpu/gemm_q8.h; 8 bits: q8_prompt_products(), AVX2 and
  // AVX512-VNNI without AMX; 16: q16_prompt_products(), AVX512-VNNI without AMX): 8 (as
  // decode calls', and llama.cpp's), 16 (int16 per group of 32, ~1.5e-5 of the group's largest
  // value; prompt calls of up to kPromptGemmTokens tokens: float32) or 32 (float32). Elsewhere
  // float32. 8-bit activations change some top-1 tokens of a prompt's logits; 16 do not.
  int prompt_bits = 16;
  const float* cos_sin = nullptr;  // [max_seq, rot_dim]: cos half, then sin half
  Matrix embed;                    // [vocab, H]
#define PYRUNTIME_MODEL_FEATURE(type, name, off, ...) type name = off;
  PYRUNTIME_MODEL_FEATURES(PYRUNTIME_MODEL_FEATURE)  // model_fields.h
#undef PYRUNTIME_MODEL_FEATURE
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

// y [tokens, m.rows] = x [tokens, m.cols] m^T through the engine's products at the active level,
// on the calling thread: the kernel tests' entry. Callers check the sizes. Where m's format has
// integer products: up to kMaxRowTileTokens tokens (the decode products) against 8-bit
// activations where int8_activations; over that (the GEMM), where the level has the integer
// GEMM for them, against 8-bit ones where int8_activations, else gemm_bits' (16 or 32: float32).
void matrix_product(float* y, const float* x, int64_t tokens, const Matrix& m, bool int8_activations,
                    int gemm_bits = 32);

// Whether the active level has the integer GEMM of csrc/cpu/gemm_q8.h (against Q4_0, Q4_1,
// Q8_0, Q4_K, Q5_K, Q6_K: EngineSpec::prompt_bits) with 8-bit activations (AVX2, AVX512-VNNI
// without AMX), and with 16-bit ones (AVX512-VNNI without AMX).
bool q8_prompt_products();
bool q16_prompt_products();

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
  // of that row, or the layer's window of them (positions below it must already hold keys,
  // from earlier calls or from tokens of this call; on a layer with a ring of S slots, keys
  // written since position - S + window). The tokens of one row lie within max_tokens
  // consecutive positions. Writes float32 logits [n - first_logit, vocab] of tokens
  // first_logit..n-1.
  // \param k_cache, v_cache every layer's [cache_rows, Hkv, layer_slots(l), D] of
  //        spec.kv_dtype, one layer after another: cache_rows * cache_row_elements() values
  // \param prompt the tokens are (a chunk of) a prompt: its products take prompt_bits()
  //        activations whatever spec.int8_activations, so that a prompt's tokens get the same
  //        however much of the prompt was cached before (decode steps: false). A prompt call may hold several
  //        prompts' chunks, each a run of consecutive positions of its own row: each chunk's
  //        K/V and logits are then bitwise those of a call of its own, provided that the
  //        chunks are all longer than kPromptGemmTokens tokens or all at most that long, and
  //        that at most kMaxRowTileTokens tokens take logits.
  // \param logit_tokens null, or the n - first_logit tokens (ascending indices in [0, n)) whose
  //        logits are written, in place of first_logit..n-1 (each chunk's last token)
  void forward(const int64_t* tokens, const int64_t* positions, const int64_t* rows, int64_t n,
               void* k_cache, void* v_cache, int64_t cache_rows, float* logits,
               int64_t first_logit, bool prompt = false, const int64_t* logit_tokens = nullptr);

  const EngineSpec& spec() const;
  // The bits of the prompts' activations: spec.prompt_bits where the engine's level has the
  // integer GEMM for them, else 32. set_prompt_bits changes spec.prompt_bits (8, 16 or 32; between calls).
  int prompt_bits() const;
  void set_prompt_bits(int bits);
  // Positions layer l's cache keeps per sequence (kv_slots of its window).
  int64_t layer_slots(int layer) const;
  // K (or V) values of one cache row over every layer: Hkv * D * the sum of layer_slots.
  int64_t cache_row_elements() const;
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
