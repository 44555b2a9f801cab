// CPU kernels: raw pointers, sizes and strides (in elements), nothing of torch.
// T is float or bf16; all arithmetic is float32. Callers check shapes and bounds
// (the torch bindings in csrc/torch/, or the C++ tests and benchmarks).
#pragma once

#include <cstdint>

#include "pyruntime/common.h"

namespace pyruntime::cpu {

// Threads the kernels use (OpenMP); set_num_threads(0) restores the default.
int num_threads();
void set_num_threads(int n);

// STREAM-style read of `bytes` bytes by all threads (median of a few passes; the faster of one
// and eight interleaved streams per thread): the bandwidth a memory-bound kernel can reach on
// this machine now, in GB/s.
double measure_read_bandwidth_gbps(int64_t bytes = int64_t(1) << 30);

// Out-of-place kernels write their output with streaming stores (no write-allocate read of
// each output line, caches left alone) when one call moves at least this many bytes: its
// output would be evicted from the last-level cache before a consumer could read it back.
// The default is 3/4 of the last-level cache (32 MiB where the size is unknown), capped at
// 3/4 of 4x the threads' L2 caches (a thread's usable share of a big shared L3);
// set_streaming_store_threshold(-1) restores it, 0 streams always (tests of both paths).
int64_t streaming_store_threshold();
void set_streaming_store_threshold(int64_t bytes);
inline bool stream_output(int64_t call_bytes) { return call_bytes >= streaming_store_threshold(); }

// out[r] = x[r] * rsqrt(mean(x[r]^2) + eps) * weight
// \param out    [rows, hidden], row stride out_stride
// \param x      [rows, hidden], row stride x_stride
// \param weight [hidden]
template <typename T>
void rms_norm(T* out, int64_t out_stride, const T* x, int64_t x_stride, const T* weight,
              int64_t rows, int64_t hidden, float eps);

// residual[r] += x[r]; x[r] = rms_norm(residual[r]) (the residual is rounded to T first).
// \param x        [rows, hidden], row stride x_stride
// \param residual [rows, hidden], row stride residual_stride
template <typename T>
void fused_add_rms_norm(T* x, int64_t x_stride, T* residual, int64_t residual_stride,
                        const T* weight, int64_t rows, int64_t hidden, float eps);

using pyruntime::HeadsView;

// In-place rotary embedding of q and k.
// \param positions     [num_tokens], each in [0, max_pos)
// \param q             [num_tokens, q.num_heads, head_dim]
// \param k             [num_tokens, k.num_heads, head_dim]
// \param cos_sin_cache [max_pos, rot_dim]: cos half, then sin half
template <typename T>
void rotary_embedding(const int64_t* positions, T* q, HeadsView qv, T* k, HeadsView kv,
                      int64_t num_tokens, int64_t head_dim, const float* cos_sin_cache,
                      int64_t rot_dim, bool is_neox);

// Rotary embedding of the new tokens of each sequence, plus their k and v written
// into the KV cache at their positions, in one pass.
// \param positions [batch, tokens] (token b*tokens+t of q/k/v)
// \param q         [batch*tokens, q.num_heads, head_dim]      (rotated in place)
// \param k         [batch*tokens, kv.num_heads, head_dim]     (rotated in place)
// \param v         [batch*tokens, kv.num_heads, head_dim], same layout as k
// \param k_cache   [batch, kv.num_heads, max_seq, head_dim] contiguous
// \param v_cache   [batch, kv.num_heads, max_seq, head_dim] contiguous
template <typename T>
void rotary_embedding_and_cache(const int64_t* positions, T* q, HeadsView qv, T* k, const T* v,
                                HeadsView kv, T* k_cache, T* v_cache, int64_t batch,
                                int64_t tokens, int64_t max_seq, int64_t head_dim,
                                const float* cos_sin_cache, int64_t rot_dim, bool is_neox);

// out[r] = silu(x[r, :inter]) * x[r, inter:]
// \param out [rows, inter], row stride out_stride
// \param x   [rows, 2*inter], row stride x_stride
template <typename T>
void silu_and_mul(T* out, int64_t out_stride, const T* x, int64_t x_stride, int64_t rows,
                  int64_t inter);

// y[t] = W x[t] for a few tokens (decode): each weight row is read once for all of them,
// and each token's result is independent of the others in the call.
// \param y         [tokens, out_features]
// \param x         [tokens, in_features]
// \param w         [out_features, in_features]
// \param workspace linear_workspace_floats(...) floats
template <typename T>
void linear(T* y, const T* x, const T* w, int64_t tokens, int64_t in_features,
            int64_t out_features, float* workspace);
int64_t linear_workspace_floats(int64_t tokens, int64_t in_features, int64_t out_features);

// out = down(silu(gate x) * up x), the intermediate kept in the workspace (in the caches).
// \param out           [tokens, hidden]
// \param x             [tokens, hidden]
// \param gate_up       [2*inter, hidden]: gate rows, then up rows
// \param down          [hidden, inter]
// \param workspace     gated_mlp_workspace_floats(...) floats
template <typename T>
void gated_mlp(T* out, const T* x, const T* gate_up, const T* down, int64_t tokens,
               int64_t hidden, int64_t inter, float* workspace);
int64_t gated_mlp_workspace_floats(int64_t tokens, int64_t hidden, int64_t inter);

// How gqa_decode_attention splits each sequence's keys across threads. A sequence's
// split length depends on its own length only (never on the rest of the batch), so its
// result is the same alone or batched.
struct DecodePlan {
  int64_t target_items;  // work items wanted per sequence (over all its KV heads)
  int64_t max_splits;    // splits of the sequence that has the most
  int64_t threads;       // threads the workspace has scratch space for
};
DecodePlan plan_gqa_decode(const int32_t* seq_lens, int64_t batch, int64_t num_kv_heads);
int64_t gqa_decode_workspace_floats(const DecodePlan& plan, int64_t batch, int64_t num_q_heads,
                                    int64_t head_dim);

// One query token per sequence against its cache, split-KV with an exact combine.
// \param out       [batch, num_q_heads, head_dim]
// \param q         [batch, num_q_heads, head_dim]
// \param k_cache   [batch, num_kv_heads, max_seq, head_dim]
// \param v_cache   [batch, num_kv_heads, max_seq, head_dim]
// \param seq_lens  [batch], each in [1, max_seq]
// \param workspace gqa_decode_workspace_floats(plan, ...) floats
template <typename T>
void gqa_decode_attention(T* out, const T* q, const T* k_cache, const T* v_cache,
                          const int32_t* seq_lens, int64_t batch, int64_t num_q_heads,
                          int64_t num_kv_heads, int64_t max_seq, int64_t head_dim, float scale,
                          const DecodePlan& plan, float* workspace);

// Causal attention of a chunk of prompt tokens against one sequence's cache: token t (at
// position start_pos + t) attends to keys [0, start_pos + t]. Blocks of 32 query tokens
// meet blocks of 64 keys, so each key is read once per query block (flash-attention style).
// \param out       [tokens, num_q_heads, head_dim]
// \param q         [tokens, num_q_heads, head_dim]
// \param k_cache   [num_kv_heads, max_seq, head_dim], positions < start_pos + tokens written
// \param v_cache   [num_kv_heads, max_seq, head_dim]
// \param workspace prefill_attention_workspace_floats(threads, ...) floats
template <typename T>
void prefill_attention(T* out, const T* q, const T* k_cache, const T* v_cache, int64_t tokens,
                       int64_t start_pos, int64_t num_q_heads, int64_t num_kv_heads, int64_t max_seq,
                       int64_t head_dim, float scale, int64_t threads, float* workspace);
int64_t prefill_attention_workspace_floats(int64_t threads, int64_t num_q_heads, int64_t num_kv_heads,
                                           int64_t head_dim);

}  // namespace pyruntime::cpu
