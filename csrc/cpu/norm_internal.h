// Row pieces of RMSNorm shared by the rms_norm kernels and the engine.
#pragma once

#include <cmath>

#include "vec.h"

namespace pyruntime::cpu::PYRUNTIME_ISA::detail {

inline int lanes(int64_t hidden, int64_t i) {
  return static_cast<int>(hidden - i < VecF::W ? hidden - i : VecF::W);
}

// out = x * inv_rms * weight for one row already known to have sum of squares ss. With
// Stream, the whole 2W blocks from out's first 64-byte boundary on bypass the caches.
template <typename T, bool Stream = false>
inline void scale_row(T* out, const T* x, const T* weight, int64_t hidden, float ss, float eps) {
  constexpr int W = VecF::W;
  VecF inv = VecF::set1(1.0f / std::sqrt(ss / static_cast<float>(hidden) + eps));
  auto partial = [&](int64_t from, int64_t to) {
    for (int64_t i = from; i < to; i += W) {
      int n = lanes(to, i);
      store_n(load_n(x + i, n) * inv * load_n(weight + i, n), out + i, n);
    }
  };
  int64_t i = Stream ? lines_aligned_from(out, hidden) : 0;
  partial(0, i);
  for (; i + 2 * W <= hidden; i += 2 * W) {
    VecF x0, x1, w0, w1;
    load2(x + i, x0, x1);
    load2(weight + i, w0, w1);
    if constexpr (Stream)
      stream2(out + i, x0 * inv * w0, x1 * inv * w1);
    else
      store2(out + i, x0 * inv * w0, x1 * inv * w1);
  }
  partial(i, hidden);
}

template <typename T>
inline float sum_squares(const T* x, int64_t hidden) {
  constexpr int W = VecF::W;
  VecF acc0 = VecF::zero(), acc1 = VecF::zero();
  int64_t i = 0;
  for (; i + 2 * W <= hidden; i += 2 * W) {
    VecF v0, v1;
    load2(x + i, v0, v1);
    acc0 = VecF::fma(v0, v0, acc0);
    acc1 = VecF::fma(v1, v1, acc1);
  }
  for (; i < hidden; i += W) {
    VecF v = load_n(x + i, lanes(hidden, i));
    acc0 = VecF::fma(v, v, acc0);
  }
  return (acc0 + acc1).reduce_sum();
}

// ss[r] = sum_squares(x + r * stride, hidden) for R rows read side by side, 2W elements of
// each in turn: R streams from memory at once where one row at a time is one.
template <int R, typename T>
inline void sum_squares_rows(const T* x, int64_t stride, int64_t hidden, float* ss) {
  constexpr int W = VecF::W;
  VecF acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = VecF::zero();
  int64_t i = 0;
  for (; i + 2 * W <= hidden; i += 2 * W)
    for (int r = 0; r < R; ++r) {
      VecF v0, v1;
      load2(x + r * stride + i, v0, v1);
      acc0[r] = VecF::fma(v0, v0, acc0[r]);
      acc1[r] = VecF::fma(v1, v1, acc1[r]);
    }
  for (; i < hidden; i += W)
    for (int r = 0; r < R; ++r) {
      VecF v = load_n(x + r * stride + i, lanes(hidden, i));
      acc0[r] = VecF::fma(v, v, acc0[r]);
    }
  for (int r = 0; r < R; ++r) ss[r] = (acc0[r] + acc1[r]).reduce_sum();
}

// out = rms_norm(x) * weight for one row.
template <typename T>
inline void rms_norm_row(T* out, const T* x, const T* weight, int64_t hidden, float eps) {
  scale_row(out, x, weight, hidden, sum_squares(x, hidden), eps);
}

}  // namespace pyruntime::cpu::PYRUNTIME_ISA::detail
