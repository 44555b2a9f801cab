// int8 decode products on AVX512-VNNI (the avx512 levels, where the CPU has it).
#pragma once

#include <cstdlib>
#include <vector>

#include "linear_tiles.h"
#include "vec.h"
#include "weight_rows.h"

namespace pyruntime::cpu::PYRUNTIME_ISA::detail {

#if defined(PYRUNTIME_VEC_AVX512)
// int8 rows times tokens quantised to int16 (one scale per token and weight group, the
// group's largest |x| mapped to 32767, so x is kept to ~1.5e-5 of that), summed with the
// AVX512-VNNI instruction vpdpwssd: 32 weights widened to int16 and multiplied into 16 int32
// sums in two instructions, where the float path needs six. Exact integer sums per group,
// then one float FMA per group with the product of the two scales. CPUs without VNNI keep
// the float path (checked at run time; the build flags need not include it), and so does
// every CPU when the environment sets PYRUNTIME_NO_VNNI (for A/B measurements).
namespace vnni {

inline bool available() {
  static const bool ok = __builtin_cpu_supports("avx512vnni") && !std::getenv("PYRUNTIME_NO_VNNI");
  return ok;
}

// xq[t, i] * xs[t, g] ~ x[t, i] for groups g of `group` (a multiple of 16) columns.
inline void quantize(int16_t* xq, float* xs, const float* x, int64_t x_stride, int64_t tokens, int64_t in,
                     int64_t group) {
  constexpr int W = VecF::W;
  const int64_t groups = in / group;
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t g = 0; g < groups; ++g) {
      const float* src = x + t * x_stride + g * group;
      __m512 mx = _mm512_setzero_ps();
      for (int64_t i = 0; i < group; i += W) mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(src + i)));
      const float absmax = _mm512_reduce_max_ps(mx);
      const float scale = absmax / 32767.0f;
      xs[t * groups + g] = scale;
      const __m512 inv = _mm512_set1_ps(scale > 0.0f ? 1.0f / scale : 0.0f);
      int16_t* dst = xq + t * in + g * group;
      for (int64_t i = 0; i < group; i += W) {
        // Rounded to nearest; |x| * inv <= 32767 (plus rounding of the division), clamped anyway.
        __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(src + i), inv));
        q = _mm512_max_epi32(_mm512_min_epi32(q, _mm512_set1_epi32(32767)), _mm512_set1_epi32(-32767));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm512_cvtepi32_epi16(q));
      }
    }
}

#define PYRUNTIME_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))

// G: the group size (32 or 64: a compile-time constant unrolls the group's loop).
// ahead: prefetch_rows_ahead<R, Q8Rows>(in) (computed once per product: it divides).
template <int R, int NT, bool Accumulate, bool Prefetch, int G>
PYRUNTIME_VNNI inline void tile(float* y, int64_t y_stride, const int16_t* xq, int64_t in, const float* xs,
                                const Q8Rows& w, int64_t ahead) {
  static_assert(R * NT <= 16, "at most 16 accumulators");
  constexpr int64_t group = G;
  const int64_t groups = in / G;
  VecF acc[R * NT];
  for (auto& a : acc) a = VecF::zero();
  const int64_t gstep = w.group_step(), sstep = w.scale_step();
  const int8_t* wr[R];       // each row's first group; group g at g * gstep further on
  const int8_t* pr[R] = {};  // with Prefetch, the rows `ahead` further on
  const float* sr[R];
  for (int r = 0; r < R; ++r) {
    wr[r] = w.at(r, 0);
    if constexpr (Prefetch) pr[r] = w.at(ahead + r, 0);
    sr[r] = w.scale_at(r, 0);
  }
  for (int64_t g0 = 0, g = 0; g0 < in; g0 += group, ++g) {
    __m512i part[R * NT];
    for (auto& p : part) p = _mm512_setzero_si512();
    if constexpr (Prefetch)
      for (int r = 0; r < R; ++r) __builtin_prefetch(pr[r] + g * gstep, 0, 3);
    for (int64_t k = 0; k < group; k += 32) {
      __m512i xv[NT];
      for (int t = 0; t < NT; ++t) xv[t] = _mm512_loadu_si512(xq + t * in + g0 + k);
      for (int r = 0; r < R; ++r) {
        const __m512i wv =
            _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr[r] + g * gstep + k)));
        for (int t = 0; t < NT; ++t) part[r * NT + t] = _mm512_dpwssd_epi32(part[r * NT + t], wv, xv[t]);
      }
    }
    for (int r = 0; r < R; ++r) {
      const float ws = sr[r][g * sstep];
      for (int t = 0; t < NT; ++t)
        acc[r * NT + t] = VecF::fma(VecF(_mm512_cvtepi32_ps(part[r * NT + t])), VecF::set1(ws * xs[t * groups + g]),
                                    acc[r * NT + t]);
    }
  }
  store_tile<R, NT, Accumulate>(y, y_stride, acc);
}

// Rows [row_begin, row_end) of w times every token of the quantised x, two tokens per tile;
// the first tile of a row block prefetches the rows ahead.
// (The group size G is 32 or 64.)
template <bool Accumulate, int G>
PYRUNTIME_VNNI inline void rows(float* y, int64_t y_stride, const int16_t* xq, const float* xs, const Q8Rows& w,
                                int64_t tokens, int64_t in, int64_t row_begin, int64_t row_end) {
  const int64_t groups = in / G;
  const auto block = [&](auto rows_c, int64_t r, int64_t ahead) {
    constexpr int R = decltype(rows_c)::value;
    const Q8Rows wr = w.from(r);
    for (int64_t t0 = 0; t0 < tokens; t0 += 2) {
      float* yt = y + t0 * y_stride + r;
      const int16_t* xt = xq + t0 * in;
      const float* st = xs + t0 * groups;
      if (tokens - t0 >= 2)
        t0 == 0 ? tile<R, 2, Accumulate, true, G>(yt, y_stride, xt, in, st, wr, ahead)
                : tile<R, 2, Accumulate, false, G>(yt, y_stride, xt, in, st, wr, ahead);
      else
        t0 == 0 ? tile<R, 1, Accumulate, true, G>(yt, y_stride, xt, in, st, wr, ahead)
                : tile<R, 1, Accumulate, false, G>(yt, y_stride, xt, in, st, wr, ahead);
    }
  };
  int64_t r = row_begin;
  const int64_t ahead4 = prefetch_rows_ahead<4, Q8Rows>(in), ahead1 = prefetch_rows_ahead<1, Q8Rows>(in);
  for (; r + 4 <= row_end; r += 4) block(std::integral_constant<int, 4>{}, r, ahead4);
  for (; r < row_end; ++r) block(std::integral_constant<int, 1>{}, r, ahead1);
}

#undef PYRUNTIME_VNNI

}  // namespace vnni
#endif

}  // namespace pyruntime::cpu::PYRUNTIME_ISA::detail
