// Row-parallel pieces of matrix-vector products shared by the CPU kernels.
#pragma once

#include "pyruntime/vec.h"

namespace pyruntime::cpu::detail {

// A tile of R weight rows times NT tokens: every weight vector loaded serves NT tokens and
// every x vector R rows (the loads, not the FMAs, bound this loop).
template <int R, int NT, typename T>
inline void linear_tile(float* y, int64_t y_stride, const float* x, int64_t x_stride, const T* w,
                        int64_t w_stride, int64_t in) {
  constexpr int W = VecF::W;
  static_assert(R * NT <= 16, "at most 16 accumulators");
  VecF acc[16];
  for (auto& a : acc) a = VecF::zero();
  for (int64_t i = 0; i < in; i += W) {
    const int n = static_cast<int>(in - i < W ? in - i : W);
    VecF xv[NT];
    for (int t = 0; t < NT; ++t) xv[t] = load_n(x + t * x_stride + i, n);
    for (int r = 0; r < R; ++r) {
      const VecF wv = load_n(w + r * w_stride + i, n);
      for (int t = 0; t < NT; ++t) acc[r * NT + t] = VecF::fma(wv, xv[t], acc[r * NT + t]);
    }
  }
  // One reduction for every tile shape, so a token's sum never depends on the tile it was in.
  float sums[16];
  reduce_sum16(acc, sums);
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < NT; ++t) y[t * y_stride + r] = sums[r * NT + t];
}

template <int NT, typename T>
inline void linear_rows_nt(float* y, int64_t y_stride, const float* x, int64_t x_stride, const T* w,
                           int64_t w_stride, int64_t in, int64_t row_begin, int64_t row_end) {
  constexpr int R = 4;
  int64_t r = row_begin;
  for (; r + R <= row_end; r += R)
    linear_tile<R, NT>(y + r, y_stride, x, x_stride, w + r * w_stride, w_stride, in);
  for (; r < row_end; ++r) linear_tile<1, NT>(y + r, y_stride, x, x_stride, w + r * w_stride, w_stride, in);
}

// y[t, r] = w[r, :in] . x[t, :in] for rows r in [row_begin, row_end). Each token's sum is
// accumulated in the same order whatever the number of tokens, so a sequence's result
// does not depend on what else is in its batch.
// \param y [tokens, *] row stride y_stride, float32
// \param x [tokens, in] row stride x_stride, float32
// \param w [*, in] row stride w_stride
template <typename T>
inline void linear_rows(float* y, int64_t y_stride, const float* x, int64_t x_stride, const T* w,
                        int64_t w_stride, int64_t tokens, int64_t in, int64_t row_begin,
                        int64_t row_end) {
  for (int64_t t0 = 0; t0 < tokens; t0 += 4) {
    float* yt = y + t0 * y_stride;
    const float* xt = x + t0 * x_stride;
    switch (tokens - t0 < 4 ? tokens - t0 : 4) {
      case 1: linear_rows_nt<1>(yt, y_stride, xt, x_stride, w, w_stride, in, row_begin, row_end); break;
      case 2: linear_rows_nt<2>(yt, y_stride, xt, x_stride, w, w_stride, in, row_begin, row_end); break;
      case 3: linear_rows_nt<3>(yt, y_stride, xt, x_stride, w, w_stride, in, row_begin, row_end); break;
      default: linear_rows_nt<4>(yt, y_stride, xt, x_stride, w, w_stride, in, row_begin, row_end); break;
    }
  }
}

// dst[i] = float(src[i]) for n elements.
template <typename T>
inline void convert_to_f32(float* dst, const T* src, int64_t n) {
  constexpr int W = VecF::W;
  for (int64_t i = 0; i < n; i += W) {
    const int m = static_cast<int>(n - i < W ? n - i : W);
    store_n(load_n(src + i, m), dst + i, m);
  }
}

}  // namespace pyruntime::cpu::detail
