// CUDA kernels' launchers: raw device pointers, sizes, strides (in elements) and a
// stream; nothing of torch. dtype selects float, bfloat16 or float16 storage; all
// arithmetic is float32. Shapes as in cpu_kernels.h. Callers check arguments.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "pyruntime/common.h"

namespace pyruntime::cuda {

using pyruntime::HeadsView;

// \param out [rows, hidden] (row stride out_stride), x [rows, hidden] (x_stride), weight [hidden]
void rms_norm(DType dtype, void* out, int64_t out_stride, const void* x, int64_t x_stride,
              const void* weight, int64_t rows, int64_t hidden, float eps, cudaStream_t stream);

// \param x [rows, hidden], residual [rows, hidden], weight [hidden]
void fused_add_rms_norm(DType dtype, void* x, int64_t x_stride, void* residual,
                        int64_t residual_stride, const void* weight, int64_t rows,
                        int64_t hidden, float eps, cudaStream_t stream);

// \param positions [num_tokens] int64; q [num_tokens, qv.num_heads, head_dim];
//        k [num_tokens, kv.num_heads, head_dim]; cos_sin_cache [max_pos, rot_dim] float32
void rotary_embedding(DType dtype, const int64_t* positions, void* q, HeadsView qv, void* k,
                      HeadsView kv, int64_t num_tokens, int64_t head_dim,
                      const float* cos_sin_cache, int64_t rot_dim, bool is_neox,
                      cudaStream_t stream);

// \param positions [batch, tokens]; q/k/v [batch*tokens, heads, head_dim];
//        k_cache/v_cache [batch, kv.num_heads, max_seq, head_dim] contiguous
void rotary_embedding_and_cache(DType dtype, const int64_t* positions, void* q, HeadsView qv,
                                void* k, const void* v, HeadsView kv, void* k_cache,
                                void* v_cache, int64_t batch, int64_t tokens, int64_t max_seq,
                                int64_t head_dim, const float* cos_sin_cache, int64_t rot_dim,
                                bool is_neox, cudaStream_t stream);

// As rotary_embedding_and_cache for num_tokens tokens, token t written at cache row
// cache_rows[t] (device int64) of k_cache/v_cache [rows, kv.num_heads, max_seq, head_dim].
void rotary_embedding_and_cache_rows(DType dtype, const int64_t* positions, void* q, HeadsView qv,
                                     void* k, const void* v, HeadsView kv, void* k_cache, void* v_cache,
                                     const int64_t* cache_rows, int64_t num_tokens, int64_t max_seq,
                                     int64_t head_dim, const float* cos_sin_cache, int64_t rot_dim,
                                     bool is_neox, cudaStream_t stream);

// \param out [rows, inter] (out_stride), x [rows, 2*inter] (x_stride)
void silu_and_mul(DType dtype, void* out, int64_t out_stride, const void* x, int64_t x_stride,
                  int64_t rows, int64_t inter, cudaStream_t stream);

// out = down(silu(gate x) * up x). \param workspace gated_mlp_workspace_floats floats
int64_t gated_mlp_workspace_floats(int64_t tokens, int64_t hidden, int64_t inter);
void gated_mlp(DType dtype, void* out, const void* x, const void* gate_up, const void* down,
               int64_t tokens, int64_t hidden, int64_t inter, float* workspace,
               cudaStream_t stream);

// Split-KV decode attention. \param seq_lens [batch] int32 on the device. k_cache and v_cache
// must be 16-byte aligned (std::invalid_argument otherwise). num_splits is an upper bound: it
// sizes the workspace, and fewer splits are used when that many would not fit the GPU at once.
// \param workspace gqa_decode_workspace_floats(...) floats
int64_t gqa_decode_num_splits(int64_t batch, int64_t num_kv_heads, int64_t max_seq);
int64_t gqa_decode_workspace_floats(int64_t batch, int64_t num_q_heads, int64_t head_dim,
                                    int64_t num_splits);
void gqa_decode_attention(DType dtype, void* out, const void* q, const void* k_cache,
                          const void* v_cache, const int32_t* seq_lens, int64_t batch,
                          int64_t num_q_heads, int64_t num_kv_heads, int64_t max_seq,
                          int64_t head_dim, float scale, int64_t num_splits, float* workspace,
                          cudaStream_t stream);

// As gqa_decode_attention, query b read at q + b * q_stride and attending cache row
// cache_rows[b] (device int64; b when null) of k_cache/v_cache [rows, num_kv_heads, max_seq, head_dim].
void gqa_decode_attention_rows(DType dtype, void* out, const void* q, int64_t q_stride, const void* k_cache,
                               const void* v_cache, const int64_t* cache_rows, const int32_t* seq_lens,
                               int64_t batch, int64_t num_q_heads, int64_t num_kv_heads, int64_t max_seq,
                               int64_t head_dim, float scale, int64_t num_splits, float* workspace,
                               cudaStream_t stream);

}  // namespace pyruntime::cuda
