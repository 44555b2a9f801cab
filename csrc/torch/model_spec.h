// The model description every engine is built from: typed, built once in Python from the
// checkpoint (pyruntime/spec.py), checked here, bound as C.ModelSpec, C.LayerSpec and
// C.WeightMatrix; the engines copy it into their EngineSpec (include/pyruntime/engine.h). Its
// per-layer attributes and model-wide features are include/pyruntime/model_fields.h's lists.
// docs/architecture.md lists what a new attribute or weight format touches.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "pyruntime/engine.h"

namespace pyruntime {

using cpu::Activation;
using cpu::WeightFormat;

// The tensor element type a format's data is stored as (uint8 bytes for the GGUF blocks).
at::ScalarType storage_type(WeightFormat f);
std::vector<WeightFormat> all_weight_formats();

// One weight matrix [rows, cols] as an engine holds it: its format, its tensors, its layout.
// - float32, bfloat16: data [rows, cols] of that dtype, no scales.
// - GGUF block formats (q4_0 .. q6_k, f16): data uint8 [rows, format_row_bytes(format, cols)], the
//   file's blocks as they are, no scales (they are in the blocks).
// - int8: one float32 scale per group of `group` columns (weight = q * scale), rows plain
//   (data int8 [rows, cols], scales [rows, cols / group]) or interleaved in blocks of
//   block_rows = cpu::kInt8BlockRows rows (data [rows / 4, groups, 4, group], scales
//   [rows / 4, groups, 4]; see cpu::pack_int8_rows).
struct WeightMatrix {
  WeightFormat format = WeightFormat::Float32;
  at::Tensor data;
  std::optional<at::Tensor> scales;
  int64_t rows = 0, cols = 0;
  int64_t group = 0;       // int8 only
  int64_t block_rows = 1;  // int8 only: 1 or kInt8BlockRows

  WeightMatrix() = default;
  // Checks that data and scales fit the format (ValueError naming what does not) and takes
  // rows, cols, group and block_rows from their shapes.
  WeightMatrix(WeightFormat format, at::Tensor data, std::optional<at::Tensor> scales);

  at::Device device() const { return data.device(); }
  int64_t nbytes() const;  // data and scales
  // The engines' view (pointers into data and scales, which must stay alive).
  cpu::Matrix view() const;
  std::string repr() const;
};

// One decoder block: [norm -> attention (q, k, v; optionally q and k heads normed) -> o (-> post-norm)
// -> residual add -> norm -> gated MLP (down(act(gate x) * up x)) (-> post-norm) -> residual add].
// Its attributes are model_fields.h's lists: every matrix a WeightMatrix in its own format (a
// quantized file may hold v in another format than q and k), every vector a tensor [size] (of
// the engine's vector dtype), optional ones absent where the family lacks them, counts int64,
// tables float32 tensors shaped as ModelSpec::rope_cos_sin.
struct LayerSpec {
#define PYRUNTIME_LAYER_MATRIX(name, rows, cols) WeightMatrix name;
#define PYRUNTIME_LAYER_VECTOR(name, size) at::Tensor name;
#define PYRUNTIME_LAYER_OPTIONAL(name, ...) std::optional<at::Tensor> name;
#define PYRUNTIME_LAYER_COUNT(name) int64_t name = 0;
  PYRUNTIME_LAYER_MATRICES(PYRUNTIME_LAYER_MATRIX)
  PYRUNTIME_LAYER_VECTORS(PYRUNTIME_LAYER_VECTOR)
  PYRUNTIME_LAYER_OPTIONAL_VECTORS(PYRUNTIME_LAYER_OPTIONAL)
  PYRUNTIME_LAYER_TABLES(PYRUNTIME_LAYER_OPTIONAL)
  PYRUNTIME_LAYER_COUNTS(PYRUNTIME_LAYER_COUNT)
#undef PYRUNTIME_LAYER_MATRIX
#undef PYRUNTIME_LAYER_VECTOR
#undef PYRUNTIME_LAYER_OPTIONAL
#undef PYRUNTIME_LAYER_COUNT

  // The CPU engine's view of it (pointers into the tensors, which must stay alive).
  cpu::EngineLayer view() const;
  // Every optional attribute that is present, by name (an engine refuses those it does not compute).
  std::vector<std::string> present_optionals() const;
};

struct ModelSpec {
  std::string architecture;  // the checkpoint's (Hugging Face) architecture name
  int64_t hidden = 0, inter = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0, vocab = 0;
  double norm_eps = 1e-6;    // RMSNorm epsilon of every norm
  double attn_scale = 0.0;   // softmax scale of q.k; 0: 1/sqrt(head_dim)
  // RoPE, computed once at load for every position the engine may see (the scaling of the
  // checkpoint's rope_scaling already applied): float32 [positions, rotary_dim], cos half then
  // sin half; rotary_dim <= head_dim features per head rotate, as pairs (i, i + rotary_dim/2)
  // when rope_neox, else (2i, 2i + 1).
  at::Tensor rope_cos_sin;
  int64_t rotary_dim = 0;
  bool rope_neox = true;
  WeightMatrix embed;              // [vocab, H]
#define PYRUNTIME_MODEL_FEATURE(type, name, off, ...) type name = off;
  PYRUNTIME_MODEL_FEATURES(PYRUNTIME_MODEL_FEATURE)  // model_fields.h
#undef PYRUNTIME_MODEL_FEATURE
  std::vector<LayerSpec> layers;
  at::Tensor final_norm;           // [H]
  WeightMatrix lm_head;            // [vocab, H] (the embedding's own tensors when tied)

  int64_t num_layers() const { return static_cast<int64_t>(layers.size()); }
  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
  // Every size consistent, every tensor of the right shape and on one device, biases and norms
  // of `vector_dtype`, each matrix's format in `formats` (ValueError naming the field).
  void check(const std::string& owner, at::ScalarType vector_dtype,
             const std::vector<WeightFormat>& formats) const;
  // Bytes of the distinct tensors (a tied LM head counted once; the RoPE table left out).
  int64_t nbytes() const;
};

// cpu::quantize_int8 of a float32 [rows, cols] cpu tensor: (q int8 [rows, cols], scales
// float32 [rows, cols / group]).
std::tuple<at::Tensor, at::Tensor> quantize_int8(const at::Tensor& w, int64_t group);
int64_t int8_group_size(int64_t cols);
// x [tokens, m.cols] float32 (cpu) times m^T through the CPU engine's products at the active
// level (cpu::matrix_product): [tokens, m.rows].
// gemm_bits: cpu::matrix_product's (16 or 32).
at::Tensor matrix_product(const at::Tensor& x, const WeightMatrix& m, bool int8_activations, int64_t gemm_bits = 32);
// cpu::pack_int8_rows of quantize_int8's (q, scales): (q [rows / 4, groups, 4, group], scales
// [rows / 4, groups, 4]), the engine's int8 row blocks.
std::tuple<at::Tensor, at::Tensor> pack_int8_rows(const at::Tensor& q, const at::Tensor& scales);

}  // namespace pyruntime
