// Row-parallel pieces of matrix-vector products shared by the CPU kernels.
#pragma once

#include "pyruntime/vec.h"

namespace pyruntime::cpu::detail {

// y[t, r] = w[r, :in] . x[t, :in] for rows r in [row_begin, row_end), with every weight
// row loaded once for up to four tokens at a time. Each token's sum is accumulated in the
// same order whatever the number of tokens, so a sequence's result does not depend on
// what else is in its batch.
// \param y [tokens, *] row stride y_stride, float32
// \param x [tokens, in] row stride x_stride, float32
// \param w [*, in] row stride w_stride
template <typename T>
inline void linear_rows(float* y, int64_t y_stride, const float* x, int64_t x_stride, const T* w,
                        int64_t w_stride, int64_t tokens, int64_t in, int64_t row_begin,
                        int64_t row_end) {
  constexpr int W = VecF::W;
  for (int64_t t0 = 0; t0 < tokens; t0 += 4) {
    const int nt = static_cast<int>(tokens - t0 < 4 ? tokens - t0 : 4);
    const float* xs = x + t0 * x_stride;
    for (int64_t r = row_begin; r < row_end; ++r) {
      const T* wr = w + r * w_stride;
      VecF acc[4] = {VecF::zero(), VecF::zero(), VecF::zero(), VecF::zero()};
      for (int64_t i = 0; i < in; i += W) {
        const int n = static_cast<int>(in - i < W ? in - i : W);
        VecF wv = load_n(wr + i, n);
        for (int t = 0; t < nt; ++t) acc[t] = VecF::fma(wv, load_n(xs + t * x_stride + i, n), acc[t]);
      }
      for (int t = 0; t < nt; ++t) y[(t0 + t) * y_stride + r] = acc[t].reduce_sum();
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
