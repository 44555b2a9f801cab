// The attributes of one decoder block, and the model-wide computations only some families
// have, listed once. Everything that holds, checks, binds or copies them is generated from
// these lists: the CPU engine's cpu::EngineLayer and EngineSpec (engine.h), the bound
// C.LayerSpec and C.ModelSpec (csrc/torch/model_spec.h) with their checks and Python
// constructors, the copy from one to the other (csrc/torch/engine.cpp), the CUDA engine's
// refusal of what it does not compute, and C.LayerSpec.fields / C.ModelSpec.features, by which
// pyruntime/spec.py fills them. A new attribute is a line here, what fills it (pyruntime's
// config and loaders) and what computes it (the engines and pyruntime/reference.py).
#pragma once

#include <cstdint>

namespace pyruntime {

// The sizes the lists' shapes are written in.
struct LayerDims {
  int64_t hidden, inter, head_dim, q_dim, kv_dim, qkv_dim;
};

inline LayerDims layer_dims(int64_t hidden, int64_t inter, int64_t num_heads, int64_t num_kv_heads,
                            int64_t head_dim) {
  return {hidden, inter, head_dim, num_heads * head_dim, num_kv_heads * head_dim,
          (num_heads + 2 * num_kv_heads) * head_dim};
}

// X(name, rows, cols): a weight matrix in its own format. The engines run q, k and v (and gate
// and up) as one product over their stacked rows.
#define PYRUNTIME_LAYER_MATRICES(X) \
  X(q, q_dim, hidden)               \
  X(k, kv_dim, hidden)              \
  X(v, kv_dim, hidden)              \
  X(o, hidden, q_dim)               \
  X(gate, inter, hidden)            \
  X(up, inter, hidden)              \
  X(down, hidden, inter)

// X(name, size): a float vector every layer has.
#define PYRUNTIME_LAYER_VECTORS(X) \
  X(attn_norm, hidden)             \
  X(mlp_norm, hidden)

// X(name, size): a float vector of the families that have it, absent (null) elsewhere.
// - qkv_bias: q's biases, then k's, then v's (Qwen2).
// - q_norm, k_norm: RMSNorm weights of every q head and every k head before RoPE (qk-norm:
//   Qwen3, Gemma 3); both or neither.
// - post_attn_norm, post_mlp_norm: RMSNorm weights of the attention's output and of the MLP's
//   before their residual adds (Gemma 2/3).
#define PYRUNTIME_LAYER_OPTIONAL_VECTORS(X) \
  X(qkv_bias, qkv_dim)                      \
  X(o_bias, hidden)                         \
  X(q_norm, head_dim)                       \
  X(k_norm, head_dim)                       \
  X(post_attn_norm, hidden)                 \
  X(post_mlp_norm, hidden)

// X(name): a count >= 0.
// - sliding_window: attention limited to the last sliding_window positions (the token at pos
//   attends keys [pos + 1 - sliding_window, pos]); 0: the whole sequence. Such a layer's CPU
//   cache keeps only kv_slots(sliding_window, ...) positions per sequence, as a ring.
#define PYRUNTIME_LAYER_COUNTS(X) X(sliding_window)

// X(name): an optional float32 table shaped as the model's RoPE table [positions, rotary_dim]
// (cos half, then sin half).
// - rope_cos_sin: this layer's own RoPE (Gemma 3's local base on sliding layers); absent: the
//   model's.
#define PYRUNTIME_LAYER_TABLES(X) X(rope_cos_sin)

// X(type, name, off, valid, requirement): a model-wide computation, `off` for the families
// without it; `valid` (of its value v) must hold, as `requirement` says.
// - embed_scale: the embedding rows times this (Gemma: sqrt(hidden)).
// - activation: the MLP's gate activation, down(act(gate x) * up x).
// - attn_softcap, final_softcap: > 0: attention scores (the logits) become cap tanh(x / cap)
//   (Gemma 2).
#define PYRUNTIME_MODEL_FEATURES(X)                                                                  \
  X(float, embed_scale, 1.0f, std::isfinite(v) && v > 0.0f, "positive")                             \
  X(Activation, activation, Activation::SiLU, v == Activation::SiLU || v == Activation::GeluTanh,   \
    "silu or gelu_tanh")                                                                             \
  X(float, attn_softcap, 0.0f, std::isfinite(v) && v >= 0.0f, ">= 0 (0: no capping)")               \
  X(float, final_softcap, 0.0f, std::isfinite(v) && v >= 0.0f, ">= 0 (0: no capping)")

}  // namespace pyruntime
