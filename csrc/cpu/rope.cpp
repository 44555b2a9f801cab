#include <cstring>
#include <type_traits>

#include "isa.h"
#include "vec.h"
#include "rope_internal.h"
#include "side_by_side_internal.h"

namespace pyruntime::cpu::PYRUNTIME_ISA {

namespace {

// Rotates q and k of R tokens, head by head over the tokens (R streams of rows at once).
template <int R, typename T>
inline void rotate_tokens(T* q, const HeadsView& qv, T* k, const HeadsView& kv, const int64_t* tokens,
                          const int64_t* positions, const float* cos_sin_cache, int64_t rot_dim,
                          bool is_neox) {
  const float* cos[R];
  for (int s = 0; s < R; ++s) cos[s] = cos_sin_cache + positions[tokens[s]] * rot_dim;
  const auto heads = [&](T* x, const HeadsView& v) {
    for (int64_t h = 0; h < v.num_heads; ++h)
      for (int s = 0; s < R; ++s)
        detail::rotate_head(x + tokens[s] * v.token_stride + h * v.head_stride, cos[s], cos[s] + rot_dim / 2,
                            rot_dim, is_neox);
  };
  heads(q, qv);
  heads(k, kv);
}

// Runs rotate(R, tokens) over this thread's share of n tokens, kSideBySide at a time.
template <typename F>
inline void rotate_share(int64_t n, F&& rotate) {
  int64_t begin, end;
  detail::thread_share(n, begin, end);
  detail::for_side_by_side(
      begin, end,
      [&](int64_t first, int64_t run) {
        int64_t tokens[detail::kSideBySide];
        for (int s = 0; s < detail::kSideBySide; ++s) tokens[s] = first + s * run;
        rotate(std::integral_constant<int, detail::kSideBySide>{}, tokens);
      },
      [&](int64_t t) { rotate(std::integral_constant<int, 1>{}, &t); });
}

}  // namespace

template <typename T>
void rotary_embedding(const int64_t* positions, T* q, HeadsView qv, T* k, HeadsView kv,
                      int64_t num_tokens, int64_t head_dim, const float* cos_sin_cache,
                      int64_t rot_dim, bool is_neox) {
  (void)head_dim;
#pragma omp parallel if (num_tokens > 4)
  rotate_share(num_tokens, [&](auto r, const int64_t* tokens) {
    rotate_tokens<decltype(r)::value>(q, qv, k, kv, tokens, positions, cos_sin_cache, rot_dim, is_neox);
  });
}

template <typename T>
void rotary_embedding_and_cache(const int64_t* positions, T* q, HeadsView qv, T* k, const T* v,
                                HeadsView kv, T* k_cache, T* v_cache, int64_t batch,
                                int64_t tokens_per_batch, int64_t max_seq, int64_t head_dim,
                                const float* cos_sin_cache, int64_t rot_dim, bool is_neox) {
  const int64_t n = batch * tokens_per_batch;
  // Bytes read and written: q and k rotated in place, v read, k and v written to the cache.
  const int64_t row_bytes = head_dim * int64_t(sizeof(T));
  const bool stream = stream_output(n * row_bytes * (2 * qv.num_heads + 5 * kv.num_heads));
#pragma omp parallel if (n > 4)
  {
    // One token at a time: its K and V rows go to as many places in the cache as it has KV
    // heads; four tokens side by side write four times as many places at once, which loses.
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < n; ++i) {
      rotate_tokens<1>(q, qv, k, kv, &i, positions, cos_sin_cache, rot_dim, is_neox);
      const int64_t b = i / tokens_per_batch, pos = positions[i];
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

}  // namespace pyruntime::cpu::PYRUNTIME_ISA
