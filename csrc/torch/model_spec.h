// The model description every engine is built from: typed, built once in Python from the
// checkpoint (pyruntime/spec.py), checked here, bound as C.ModelSpec, C.LayerSpec and
// C.WeightMatrix; the engines copy it into their EngineSpec (include/pyruntime/engine.h).
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
// -> residual add -> norm -> gated MLP (down(act(gate x) * up x)) (-> post-norm) -> residual add]. Every projection is its own matrix in its own
// format (a quantized file may hold v in another format than q and k); the engines run q, k, v
// (and gate, up) as one product over their stacked rows.
struct LayerSpec {
  at::Tensor attn_norm;                 // [H]
  WeightMatrix q;                       // [Hq D, H]
  WeightMatrix k, v;                    // [Hkv D, H]
  std::optional<at::Tensor> qkv_bias;   // [(Hq + 2 Hkv) D]: q's, then k's, then v's
  WeightMatrix o;                       // [H, Hq D]
  std::optional<at::Tensor> o_bias;     // [H]
  at::Tensor mlp_norm;                  // [H]
  WeightMatrix gate, up;                // [I, H]
  WeightMatrix down;                    // [H, I]
  int64_t sliding_window = 0;           // attend to the last W positions; 0: all of them
  // RMSNorm weights [D] applied to every q head and every k head before RoPE (Qwen3's qk-norm).
  std::optional<at::Tensor> q_norm, k_norm;
  // RMSNorm weights [H] of the attention's output and of the MLP's before their residual adds
  // (Gemma 2/3's post-norms).
  std::optional<at::Tensor> post_attn_norm, post_mlp_norm;
  // This layer's own RoPE table, shaped as ModelSpec::rope_cos_sin (Gemma 3's sliding layers).
  std::optional<at::Tensor> rope_cos_sin;
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
  double embed_scale = 1.0;        // embedding rows times this (Gemma: sqrt(H))
  Activation activation = Activation::SiLU;  // the MLP's gate activation
  double attn_softcap = 0.0;       // > 0: attention scores become cap tanh(score / cap) (Gemma 2)
  double final_softcap = 0.0;      // > 0: so do the logits
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
