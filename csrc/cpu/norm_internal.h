// Row pieces of RMSNorm shared by the rms_norm kernels and the engine.
#pragma once

#include <cmath>

#include "pyruntime/vec.h"

namespace pyruntime::cpu::detail {

inline int lanes(int64_t hidden, int64_t i) {
  return static_cast<int>(hidden - i < VecF::W ? hidden - i : VecF::W);
}

// out = x * inv_rms * weight for one row already known to have sum of squares ss.
template <typename T>
inline void scale_row(T* out, const T* x, const T* weight, int64_t hidden, float ss, float eps) {
  constexpr int W = VecF::W;
  VecF inv = VecF::set1(1.0f / std::sqrt(ss / static_cast<float>(hidden) + eps));
  int64_t i = 0;
  for (; i + 2 * W <= hidden; i += 2 * W) {
    VecF x0, x1, w0, w1;
    load2(x + i, x0, x1);
    load2(weight + i, w0, w1);
    store2(out + i, x0 * inv * w0, x1 * inv * w1);
  }
  for (; i < hidden; i += W) {
    int n = lanes(hidden, i);
    store_n(load_n(x + i, n) * inv * load_n(weight + i, n), out + i, n);
  }
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

// out = rms_norm(x) * weight for one row.
template <typename T>
inline void rms_norm_row(T* out, const T* x, const T* weight, int64_t hidden, float eps) {
  scale_row(out, x, weight, hidden, sum_squares(x, hidden), eps);
}

}  // namespace pyruntime::cpu::detail
