#include "pyruntime/cpu_kernels.h"
#include "pyruntime/vec.h"
#include "rope_internal.h"

namespace pyruntime::cpu {

namespace {

template <typename T>
inline void rotate_token(T* q, const HeadsView& qv, T* k, const HeadsView& kv, int64_t token,
                         int64_t pos, const float* cos_sin_cache, int64_t rot_dim, bool is_neox) {
  const float* cos = cos_sin_cache + pos * rot_dim;
  const float* sin = cos + rot_dim / 2;
  for (int64_t h = 0; h < qv.num_heads; ++h)
    detail::rotate_head(q + token * qv.token_stride + h * qv.head_stride, cos, sin, rot_dim, is_neox);
  for (int64_t h = 0; h < kv.num_heads; ++h)
    detail::rotate_head(k + token * kv.token_stride + h * kv.head_stride, cos, sin, rot_dim, is_neox);
}

}  // namespace

template <typename T>
void rotary_embedding(const int64_t* positions, T* q, HeadsView qv, T* k, HeadsView kv,
                      int64_t num_tokens, int64_t head_dim, const float* cos_sin_cache,
                      int64_t rot_dim, bool is_neox) {
  (void)head_dim;
#pragma omp parallel for schedule(static) if (num_tokens > 4)
  for (int64_t t = 0; t < num_tokens; ++t)
    rotate_token(q, qv, k, kv, t, positions[t], cos_sin_cache, rot_dim, is_neox);
}

template <typename T>
void rotary_embedding_and_cache(const int64_t* positions, T* q, HeadsView qv, T* k, const T* v,
                                HeadsView kv, T* k_cache, T* v_cache, int64_t batch,
                                int64_t tokens, int64_t max_seq, int64_t head_dim,
                                const float* cos_sin_cache, int64_t rot_dim, bool is_neox) {
  const int64_t n = batch * tokens;
  // Bytes read and written: q and k rotated in place, v read, k and v written to the cache.
  const int64_t row_bytes = head_dim * int64_t(sizeof(T));
  const bool stream = stream_output(n * row_bytes * (2 * qv.num_heads + 5 * kv.num_heads));
#pragma omp parallel if (n > 4)
  {
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < n; ++i) {
      const int64_t b = i / tokens, pos = positions[i];
      rotate_token(q, qv, k, kv, i, pos, cos_sin_cache, rot_dim, is_neox);
      for (int64_t h = 0; h < kv.num_heads; ++h) {
        const int64_t src = i * kv.token_stride + h * kv.head_stride;
        const int64_t dst = ((b * kv.num_heads + h) * max_seq + pos) * head_dim;
        if (stream) {
          stream_copy(k_cache + dst, k + src, head_dim);
          stream_copy(v_cache + dst, v + src, head_dim);
        } else {
          std::memcpy(k_cache + dst, k + src, row_bytes);
          std::memcpy(v_cache + dst, v + src, row_bytes);
        }
      }
    }
    if (stream) stream_fence();
  }
}

#define PYRUNTIME_INSTANTIATE(T)                                                               \
  template void rotary_embedding<T>(const int64_t*, T*, HeadsView, T*, HeadsView, int64_t,      \
                                    int64_t, const float*, int64_t, bool);                     \
  template void rotary_embedding_and_cache<T>(const int64_t*, T*, HeadsView, T*, const T*,      \
                                              HeadsView, T*, T*, int64_t, int64_t, int64_t,    \
                                              int64_t, const float*, int64_t, bool);
PYRUNTIME_INSTANTIATE(float)
PYRUNTIME_INSTANTIATE(bf16)
#undef PYRUNTIME_INSTANTIATE

}  // namespace pyruntime::cpu
