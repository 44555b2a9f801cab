// Row-parallel pieces of matrix-vector products shared by the CPU kernels and the engine.
#pragma once

#include <type_traits>

#include "pyruntime/vec.h"

namespace pyruntime::cpu::detail {

// Rows of a dense weight matrix [*, in] (float32 or bfloat16) with row stride `stride`.
template <typename T>
struct DenseRows {
  const T* w;
  int64_t stride;
  DenseRows from(int64_t r) const { return {w + r * stride, stride}; }
  VecF load(int64_t r, int64_t i, int n) const { return load_n(w + r * stride + i, n); }
  void prefetch(int64_t r, int64_t i) const { __builtin_prefetch(w + r * stride + i, 0, 2); }
};

// Rows of an int8 weight matrix [*, in] with one float32 scale per group of
// (1 << group_shift) columns: weight = q * scale. Groups are whole vectors, so there are
// no partial loads.
struct Q8Rows {
  const int8_t* w;
  const float* scales;  // [*, in >> group_shift]
  int64_t stride, scale_stride;
  int group_shift;
  Q8Rows from(int64_t r) const {
    return {w + r * stride, scales + r * scale_stride, stride, scale_stride, group_shift};
  }
  VecF load(int64_t r, int64_t i, int) const {
    return VecF::load(w + r * stride + i) * VecF::set1(scales[r * scale_stride + (i >> group_shift)]);
  }
  void prefetch(int64_t r, int64_t i) const { __builtin_prefetch(w + r * stride + i, 0, 2); }
};

// A tile of R weight rows times NT tokens: every weight vector loaded serves NT tokens and
// every x vector R rows (the loads, not the FMAs, bound this loop). With Accumulate the
// sums are added to y instead of stored. With Prefetch the next R rows are requested from
// memory as these are read: one core cannot keep enough misses in flight otherwise.
template <int R, int NT, bool Accumulate, bool Prefetch = false, typename Rows>
inline void linear_tile(float* y, int64_t y_stride, const float* x, int64_t x_stride, const Rows& w,
                        int64_t in) {
  constexpr int W = VecF::W;
  static_assert(R * NT <= 16, "at most 16 accumulators");
  VecF acc[16];
  for (auto& a : acc) a = VecF::zero();
  for (int64_t i = 0; i < in; i += W) {
    const int n = static_cast<int>(in - i < W ? in - i : W);
    VecF xv[NT];
    for (int t = 0; t < NT; ++t) xv[t] = load_n(x + t * x_stride + i, n);
    for (int r = 0; r < R; ++r) {
      if constexpr (Prefetch) w.prefetch(R + r, i);
      const VecF wv = w.load(r, i, n);
      for (int t = 0; t < NT; ++t) acc[r * NT + t] = VecF::fma(wv, xv[t], acc[r * NT + t]);
    }
  }
  // One reduction for every tile shape, so a token's sum never depends on the tile it was in.
  float sums[16];
  reduce_sum16(acc, sums);
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < NT; ++t) {
      float& out = y[t * y_stride + r];
      out = Accumulate ? out + sums[r * NT + t] : sums[r * NT + t];
    }
}

// R rows [r, r + R) times every token, four tokens at a time: the rows stay in L1 while
// the tokens stream past (a prefill chunk reads each weight once). The first group of
// tokens prefetches the next block of rows.
template <int R, bool Accumulate, typename Rows>
inline void linear_row_block(float* y, int64_t y_stride, const float* x, int64_t x_stride,
                             const Rows& w, int64_t tokens, int64_t in) {
  auto tile = [&](auto nt, auto prefetch, int64_t t0) {
    linear_tile<R, decltype(nt)::value, Accumulate, decltype(prefetch)::value>(
        y + t0 * y_stride, y_stride, x + t0 * x_stride, x_stride, w, in);
  };
  auto group = [&](auto prefetch, int64_t t0) {
    switch (tokens - t0 < 4 ? tokens - t0 : 4) {
      case 4: tile(std::integral_constant<int, 4>{}, prefetch, t0); break;
      case 3: tile(std::integral_constant<int, 3>{}, prefetch, t0); break;
      case 2: tile(std::integral_constant<int, 2>{}, prefetch, t0); break;
      case 1: tile(std::integral_constant<int, 1>{}, prefetch, t0); break;
      default: break;
    }
  };
  group(std::true_type{}, 0);
  for (int64_t t0 = 4; t0 < tokens; t0 += 4) group(std::false_type{}, t0);
}

// y[t, r] (+)= w[r, :in] . x[t, :in] for rows r in [row_begin, row_end). Each token's sum is
// accumulated in the same order whatever the number of tokens, so a sequence's result
// does not depend on what else is in its batch.
// \param y [tokens, *] row stride y_stride, float32
// \param x [tokens, in] row stride x_stride, float32
// \param w weight rows (DenseRows or Q8Rows)
template <bool Accumulate = false, typename Rows>
inline void linear_rows(float* y, int64_t y_stride, const float* x, int64_t x_stride, const Rows& w,
                        int64_t tokens, int64_t in, int64_t row_begin, int64_t row_end) {
  constexpr int R = 4;
  int64_t r = row_begin;
  for (; r + R <= row_end; r += R)
    linear_row_block<R, Accumulate>(y + r, y_stride, x, x_stride, w.from(r), tokens, in);
  for (; r < row_end; ++r)
    linear_row_block<1, Accumulate>(y + r, y_stride, x, x_stride, w.from(r), tokens, in);
}

// dst[i] = src[i] for n elements, converted through float32.
template <typename D, typename S>
inline void convert(D* dst, const S* src, int64_t n) {
  constexpr int W = VecF::W;
  for (int64_t i = 0; i < n; i += W) {
    const int m = static_cast<int>(n - i < W ? n - i : W);
    store_n(load_n(src + i, m), dst + i, m);
  }
}

}  // namespace pyruntime::cpu::detail
