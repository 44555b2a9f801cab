#include "common.cuh"
#include "pyruntime/cuda_kernels.h"

namespace pyruntime::cuda {

namespace {

// Rotates pair i (of rot_dim / 2) of one head. \param x [head_dim]
template <typename T>
__device__ __forceinline__ void rotate_pair(T* x, int64_t i, int64_t half, float c, float s,
                                            bool is_neox) {
  const int64_t a = is_neox ? i : 2 * i, b = is_neox ? i + half : 2 * i + 1;
  const float x1 = to_f(x[a]), x2 = to_f(x[b]);
  x[a] = from_f<T>(x1 * c - x2 * s);
  x[b] = from_f<T>(x2 * c + x1 * s);
}

// One block per token; threads over (head, pair) for q then k. When caches are given,
// k (rotated) and v of the token are also written at their position.
template <typename T>
__global__ void rope_kernel(const int64_t* positions, T* q, HeadsView qv, T* k, HeadsView kv,
                            const T* v, T* k_cache, T* v_cache, const int64_t* cache_rows,
                            int64_t tokens, int64_t max_seq,
                            int64_t head_dim, const float* cos_sin_cache, int64_t rot_dim,
                            bool is_neox) {
  const int64_t tok = blockIdx.x, pos = positions[tok];
  const int64_t half = rot_dim / 2;
  const float* cos = cos_sin_cache + pos * rot_dim;
  const float* sin = cos + half;
  const int64_t nq = qv.num_heads * half, nk = kv.num_heads * half;
  for (int64_t i = threadIdx.x; i < nq + nk; i += blockDim.x) {
    const bool is_q = i < nq;
    const int64_t j = is_q ? i : i - nq, h = j / half, p = j % half;
    T* x = is_q ? q + tok * qv.token_stride + h * qv.head_stride
                : k + tok * kv.token_stride + h * kv.head_stride;
    rotate_pair(x, p, half, cos[p], sin[p], is_neox);
  }
  if (k_cache == nullptr) return;
  __syncthreads();
  const int64_t b = cache_rows ? cache_rows[tok] : tok / tokens;
  for (int64_t i = threadIdx.x; i < kv.num_heads * head_dim; i += blockDim.x) {
    const int64_t h = i / head_dim, d = i % head_dim;
    const int64_t src = tok * kv.token_stride + h * kv.head_stride + d;
    const int64_t dst = ((b * kv.num_heads + h) * max_seq + pos) * head_dim + d;
    k_cache[dst] = k[src];
    v_cache[dst] = v[src];
  }
}

}  // namespace

void rotary_embedding(DType dtype, const int64_t* positions, void* q, HeadsView qv, void* k,
                      HeadsView kv, int64_t num_tokens, int64_t head_dim,
                      const float* cos_sin_cache, int64_t rot_dim, bool is_neox,
                      cudaStream_t stream) {
  if (num_tokens == 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    rope_kernel<T><<<num_tokens, 256, 0, stream>>>(positions, static_cast<T*>(q), qv,
                                                   static_cast<T*>(k), kv, nullptr, nullptr,
                                                   nullptr, nullptr, 1, 0, head_dim, cos_sin_cache,
                                                   rot_dim, is_neox);
  });
  check_launch("rotary_embedding");
}

void rotary_embedding_and_cache(DType dtype, const int64_t* positions, void* q, HeadsView qv,
                                void* k, const void* v, HeadsView kv, void* k_cache,
                                void* v_cache, int64_t batch, int64_t tokens, int64_t max_seq,
                                int64_t head_dim, const float* cos_sin_cache, int64_t rot_dim,
                                bool is_neox, cudaStream_t stream) {
  if (batch * tokens == 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    rope_kernel<T><<<batch * tokens, 256, 0, stream>>>(
        positions, static_cast<T*>(q), qv, static_cast<T*>(k), kv, static_cast<const T*>(v),
        static_cast<T*>(k_cache), static_cast<T*>(v_cache), nullptr, tokens, max_seq, head_dim,
        cos_sin_cache, rot_dim, is_neox);
  });
  check_launch("rotary_embedding_and_cache");
}

void rotary_embedding_and_cache_rows(DType dtype, const int64_t* positions, void* q, HeadsView qv,
                                     void* k, const void* v, HeadsView kv, void* k_cache, void* v_cache,
                                     const int64_t* cache_rows, int64_t num_tokens, int64_t max_seq,
                                     int64_t head_dim, const float* cos_sin_cache, int64_t rot_dim,
                                     bool is_neox, cudaStream_t stream) {
  if (num_tokens == 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    rope_kernel<T><<<num_tokens, 256, 0, stream>>>(
        positions, static_cast<T*>(q), qv, static_cast<T*>(k), kv, static_cast<const T*>(v),
        static_cast<T*>(k_cache), static_cast<T*>(v_cache), cache_rows, 1, max_seq, head_dim,
        cos_sin_cache, rot_dim, is_neox);
  });
  check_launch("rotary_embedding_and_cache");
}

}  // namespace pyruntime::cuda
