// Row-parallel pieces of matrix-vector products shared by the CPU kernels and the engine.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <type_traits>
#include <utility>
#include <vector>

#include "vec.h"
#include "side_by_side_internal.h"

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace pyruntime::cpu::PYRUNTIME_ISA::detail {

// Rows of a dense weight matrix [*, in] (float32 or bfloat16) with row stride `stride`. A tile
// takes rows 0, 1, .. of the view, tile_stride elements apart (0: stride, consecutive rows; more:
// rows of runs side by side).
template <typename T>
struct DenseRows {
  const T* w;
  int64_t stride;
  int64_t tile_stride = 0;
  int64_t row_step() const { return tile_stride ? tile_stride : stride; }
  // The view from row r on (with runs side by side: from row r of each run).
  DenseRows from(int64_t r) const { return {w + r * stride, stride, tile_stride}; }
  VecF load(int64_t r, int64_t i, int n) const { return load_n(w + r * row_step() + i, n); }
  // Requests row r's line at column i, `ahead` rows further on (once per 64-byte line).
  void prefetch_ahead(int64_t r, int64_t i, int64_t ahead) const {
    if ((i * static_cast<int64_t>(sizeof(T))) % 64 == 0) __builtin_prefetch(w + r * row_step() + ahead * stride + i, 0, 3);
  }
  static int64_t row_bytes(int64_t in) { return in * static_cast<int64_t>(sizeof(T)); }
};

// Rows of an int8 weight matrix [*, in] with one float32 scale per group of
// (1 << group_shift) columns: weight = q * scale. Groups are whole vectors, so there are
// no partial loads. The tiles sum q * x over a group first and scale that once. The rows are
// plain (block_shift 0) or interleaved in blocks of 1 << block_shift rows (engine.h's Matrix):
// group g of row r of a block at g * (block rows) * group + r * group within the block.
struct Q8Rows {
  static constexpr bool kGrouped = true;
  const int8_t* w;      // the matrix's first row (a block's start)
  const float* scales;  // its scales
  int64_t cols;
  int64_t row0;  // the first row of this view
  int group_shift, block_shift;
  Q8Rows from(int64_t r) const { return {w, scales, cols, row0 + r, group_shift, block_shift}; }
  // Column i of row r of this view, and the scale of its group g. Along a row, group g + 1
  // follows group g group_step() values and scale_step() scales further on.
  const int8_t* at(int64_t r, int64_t i) const {
    const auto [block_row, in_block] = split_row(r);
    return w + block_row * cols + ((i >> group_shift) << (group_shift + block_shift)) +
           (in_block << group_shift) + (i & ((int64_t(1) << group_shift) - 1));
  }
  const float* scale_at(int64_t r, int64_t g) const {
    const auto [block_row, in_block] = split_row(r);
    return scales + block_row * (cols >> group_shift) + (g << block_shift) + in_block;
  }
  float scale(int64_t r, int64_t g) const { return *scale_at(r, g); }
  int64_t group_step() const { return int64_t(1) << (group_shift + block_shift); }
  int64_t scale_step() const { return int64_t(1) << block_shift; }
  VecF load(int64_t r, int64_t i, int) const { return VecF::load(at(r, i)) * VecF::set1(scale(r, i >> group_shift)); }
  static int64_t row_bytes(int64_t in) { return in; }  // the scales are a separate, 1/16 as dense stream

 private:
  // Row r of this view as (its block's first row, its place in the block).
  std::pair<int64_t, int64_t> split_row(int64_t r) const {
    const int64_t row = row0 + r, in_block = row & ((int64_t(1) << block_shift) - 1);
    return {row - in_block, in_block};
  }
};

// How many rows ahead of a block of R rows [in columns] the tiles prefetch: whole blocks, at
// least kPrefetchAheadBytes ahead. One block ahead is too close for short int8 rows (SmolLM2's
// 576 bytes: a 2.3 KiB block; two blocks ahead read its int8 weights ~7 % faster from DRAM).
template <int R, typename Rows>
inline int64_t prefetch_rows_ahead(int64_t in) {
  const int64_t block = R * Rows::row_bytes(in);
  return R * ((kPrefetchAheadBytes + block - 1) / block);
}

template <typename Rows, typename = void>
struct IsGrouped : std::false_type {};
template <typename Rows>
struct IsGrouped<Rows, std::void_t<decltype(Rows::kGrouped)>> : std::bool_constant<Rows::kGrouped> {};

// y[t, r] (+)= the horizontal sum of acc[r * NT + t]: one reduction for every tile shape, so a
// token's sum never depends on the tile it was in.
// Row r's sums go to y[t * y_stride + r * y_row_step].
template <int R, int NT, bool Accumulate>
inline void store_tile(float* y, int64_t y_stride, const VecF* acc, int64_t y_row_step = 1) {
  VecF all[16];
  for (int k = 0; k < 16; ++k) all[k] = k < R * NT ? acc[k] : VecF::zero();
  float sums[16];
  reduce_sum16(all, sums);
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < NT; ++t) {
      float& out = y[t * y_stride + r * y_row_step];
      out = Accumulate ? out + sums[r * NT + t] : sums[r * NT + t];
    }
}

// A tile of R weight rows times NT tokens: every weight vector loaded serves NT tokens and
// every x vector R rows (the loads, not the FMAs, bound this loop). With Accumulate the
// sums are added to y instead of stored. With Prefetch rows further on (prefetch_rows_ahead) are
// requested from memory as these are read: one core cannot keep enough misses in flight otherwise.
// (The accumulators are named locals, not the reduction's array: GCC keeps an array whose
// address escapes in memory and stores it on every iteration.)
// \param ahead prefetch_rows_ahead<R, Rows>(in), computed once per product (it divides); rows
//              of runs side by side: rows ahead in each run
// \param y_row_step where row r's sums go: y[t * y_stride + r * y_row_step]
template <int R, int NT, bool Accumulate, bool Prefetch, typename Rows>
inline void linear_tile(float* y, int64_t y_stride, const float* x, int64_t x_stride, const Rows& w,
                        int64_t in, int64_t ahead, int64_t y_row_step = 1) {
  constexpr int W = VecF::W;
  static_assert(R * NT <= 16, "at most 16 accumulators");
  VecF acc[R * NT];
  for (auto& a : acc) a = VecF::zero();
  if constexpr (IsGrouped<Rows>::value) {
    // int8: per group, sum q * x, then add that times the group's scale. Each row's values,
    // scales and prefetch target advance by a fixed step per group (no addressing per load).
    const int64_t group = int64_t(1) << w.group_shift, gstep = w.group_step(), sstep = w.scale_step();
    const int8_t* wr[R];
    const int8_t* pr[R] = {};
    const float* sr[R];
    for (int r = 0; r < R; ++r) {
      wr[r] = w.at(r, 0);
      if constexpr (Prefetch) pr[r] = w.at(ahead + r, 0);
      sr[r] = w.scale_at(r, 0);
    }
    for (int64_t g0 = 0, g = 0; g0 < in; g0 += group, ++g) {
      VecF part[R * NT];
      for (auto& a : part) a = VecF::zero();
      if constexpr (Prefetch)  // once per group: a group is at least half a cache line
        for (int r = 0; r < R; ++r) __builtin_prefetch(pr[r] + g * gstep, 0, 3);
      for (int64_t k = 0; k < group; k += W) {
        VecF xv[NT];
        for (int t = 0; t < NT; ++t) xv[t] = VecF::load(x + t * x_stride + g0 + k);
        for (int r = 0; r < R; ++r) {
          const VecF wv = VecF::load(wr[r] + g * gstep + k);
          for (int t = 0; t < NT; ++t) part[r * NT + t] = VecF::fma(wv, xv[t], part[r * NT + t]);
        }
      }
      for (int r = 0; r < R; ++r) {
        const VecF sv = VecF::set1(sr[r][g * sstep]);
        for (int t = 0; t < NT; ++t) acc[r * NT + t] = VecF::fma(part[r * NT + t], sv, acc[r * NT + t]);
      }
    }
  } else {
    auto step = [&](VecF* sums, int64_t i, int n) {
      VecF xv[NT];
      for (int t = 0; t < NT; ++t) xv[t] = load_n(x + t * x_stride + i, n);
      for (int r = 0; r < R; ++r) {
        if constexpr (Prefetch) w.prefetch_ahead(r, i, ahead);
        const VecF wv = w.load(r, i, n);
        for (int t = 0; t < NT; ++t) sums[r * NT + t] = VecF::fma(wv, xv[t], sums[r * NT + t]);
      }
    };
    int64_t i = 0;
    for (; i + W <= in; i += W) step(acc, i, W);
    if (i < in) step(acc, i, static_cast<int>(in - i));
  }
  store_tile<R, NT, Accumulate>(y, y_stride, acc, y_row_step);
}

// R rows [r, r + R) times every token, four (int8: two) tokens at a time: the rows stay in L1 while
// the tokens stream past (a prefill chunk reads each weight once). The first group of
// tokens prefetches the rows ahead (prefetch_rows_ahead).
template <int R, bool Accumulate, typename Rows>
inline void linear_row_block(float* y, int64_t y_stride, const float* x, int64_t x_stride,
                             const Rows& w, int64_t tokens, int64_t in, int64_t ahead, int64_t y_row_step = 1) {
  // int8 tiles hold a partial sum per accumulator too: fewer tokens per tile keep both in registers.
  constexpr int kTokens = IsGrouped<Rows>::value ? 2 : 4;
  auto tile = [&](auto nt, auto prefetch, int64_t t0) {
    linear_tile<R, decltype(nt)::value, Accumulate, decltype(prefetch)::value>(
        y + t0 * y_stride, y_stride, x + t0 * x_stride, x_stride, w, in, ahead, y_row_step);
  };
  auto group = [&](auto prefetch, int64_t t0) {
    switch (tokens - t0 < kTokens ? tokens - t0 : kTokens) {
      case 4: if constexpr (kTokens >= 4) tile(std::integral_constant<int, 4>{}, prefetch, t0); break;
      case 3: if constexpr (kTokens >= 3) tile(std::integral_constant<int, 3>{}, prefetch, t0); break;
      case 2: tile(std::integral_constant<int, 2>{}, prefetch, t0); break;
      case 1: tile(std::integral_constant<int, 1>{}, prefetch, t0); break;
      default: break;
    }
  };
  group(std::true_type{}, 0);
  for (int64_t t0 = kTokens; t0 < tokens; t0 += kTokens) group(std::false_type{}, t0);
}

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

// y[t, r] (+)= w[r, :in] . x[t, :in] for rows r in [row_begin, row_end). Each token's sum is
// accumulated in the same order whatever the number of tokens, so a sequence's result
// does not depend on what else is in its batch.
// \param y [tokens, *] row stride y_stride, float32
// \param x [tokens, in] row stride x_stride, float32
// \param w weight rows (DenseRows or Q8Rows)
template <bool Accumulate = false, typename Rows>
inline void linear_rows(float* y, int64_t y_stride, const float* x, int64_t x_stride, const Rows& w,
                        int64_t tokens, int64_t in, int64_t row_begin, int64_t row_end) {
#if defined(PYRUNTIME_VEC_AVX512)
  if constexpr (std::is_same_v<Rows, Q8Rows>) {
    const int64_t group = int64_t(1) << w.group_shift;
    if (vnni::available() && (group == 32 || group == 64) && row_begin < row_end) {
      // Every thread quantises x for itself (a few thousand values; no barrier needed).
      thread_local std::vector<int16_t> xq;
      thread_local std::vector<float> xs;
      if (static_cast<int64_t>(xq.size()) < tokens * in) xq.resize(tokens * in);  // grows, then stays
      if (static_cast<int64_t>(xs.size()) < tokens * (in / group)) xs.resize(tokens * (in / group));
      vnni::quantize(xq.data(), xs.data(), x, x_stride, tokens, in, group);
      if (group == 64)
        vnni::rows<Accumulate, 64>(y, y_stride, xq.data(), xs.data(), w, tokens, in, row_begin, row_end);
      else
        vnni::rows<Accumulate, 32>(y, y_stride, xq.data(), xs.data(), w, tokens, in, row_begin, row_end);
      return;
    }
  }
#endif
  const int64_t ahead1 = prefetch_rows_ahead<1, Rows>(in);
  if constexpr (IsGrouped<Rows>::value) {
    constexpr int R = 4;
    const int64_t ahead4 = prefetch_rows_ahead<R, Rows>(in);
    int64_t r = row_begin;
    for (; r + R <= row_end; r += R)
      linear_row_block<R, Accumulate>(y + r, y_stride, x, x_stride, w.from(r), tokens, in, ahead4);
    for (; r < row_end; ++r)
      linear_row_block<1, Accumulate>(y + r, y_stride, x, x_stride, w.from(r), tokens, in, ahead1);
  } else {
    // Dense rows: a tile takes a row of each of kSideBySide runs of the rows, read side by side
    // (each run prefetched ahead on its own).
    static_assert(kSideBySide == 4, "tiles of four rows");
    for_side_by_side(
        row_begin, row_end,
        [&](int64_t r, int64_t run) {
          Rows side = w.from(r);
          side.tile_stride = run * w.stride;
          linear_row_block<kSideBySide, Accumulate>(y + r, y_stride, x, x_stride, side, tokens, in, ahead1, run);
        },
        [&](int64_t r) {
          linear_row_block<1, Accumulate>(y + r, y_stride, x, x_stride, w.from(r), tokens, in, ahead1);
        });
  }
}

// Products over many tokens (prefill chunks): a packed outer-product GEMM. kPanelRows rows
// of w are packed once per panel, transposed to [in, kPanelRows] float32, into a per-thread
// buffer; every group of up to kGemmTokens tokens then keeps panel x tokens sums in
// registers, with one packed load per row vector and one broadcast of x per token and k.
// (The sums run over k in order, so they differ in rounding from linear_rows.)
constexpr int kPanelRows = 2 * VecF::W;
#if defined(PYRUNTIME_VEC_AVX512)
constexpr int kGemmTokens = 12;  // 24 accumulators of the 32 zmm registers
#else
constexpr int kGemmTokens = 6;   // 12 of the 16 ymm registers
#endif

inline int64_t gemm_pack_floats(int64_t in) { return in * kPanelRows; }

// packed[k, j] = w[j, k] for the `rows` (<= kPanelRows) rows of w; zeros past them. A block
// of W columns of every row is transposed in registers (AVX-512: two 16 x 16 tiles) or goes
// through a small buffer, so the packed rows are written in order.
template <typename Rows>
inline void gemm_pack(float* packed, const Rows& w, int rows, int64_t in) {
  constexpr int W = VecF::W;
  alignas(64) float block[kPanelRows * W];  // [row j][column kk]
  for (int j = rows; j < kPanelRows; ++j) VecF::zero().store(block + j * W);
  for (int64_t k0 = 0; k0 < in; k0 += W) {
    const int n = static_cast<int>(in - k0 < W ? in - k0 : W);
#if defined(PYRUNTIME_VEC_AVX512)
    static_assert(kPanelRows == 2 * W, "two tiles per block");
    if (n == W) {
      VecF t[kPanelRows];
      for (int j = 0; j < kPanelRows; ++j) t[j] = j < rows ? w.load(j, k0, W) : VecF::zero();
      transpose16(t);
      transpose16(t + W);
      for (int kk = 0; kk < W; ++kk) {
        t[kk].store(packed + (k0 + kk) * kPanelRows);
        t[W + kk].store(packed + (k0 + kk) * kPanelRows + W);
      }
      continue;
    }
#endif
    for (int j = 0; j < rows; ++j) w.load(j, k0, n).store(block + j * W);
    for (int kk = 0; kk < n; ++kk) {
      float* dst = packed + (k0 + kk) * kPanelRows;
      for (int j = 0; j < kPanelRows; ++j) dst[j] = block[j * W + kk];
    }
  }
}

// One k step of the micro-kernel: acc{0,1}[t] += packed row (two vectors) * x[t * x_stride].
// (Always inlined: the accumulator arrays must stay in registers.)
template <int NT>
__attribute__((always_inline)) inline void gemm_step(VecF (&acc0)[NT], VecF (&acc1)[NT], const float* p,
                                                     const float* x, int64_t x_stride) {
  const VecF w0 = VecF::load(p), w1 = VecF::load(p + VecF::W);
  for (int t = 0; t < NT; ++t) {
    const VecF xb = VecF::set1(x[t * x_stride]);
    acc0[t] = VecF::fma(w0, xb, acc0[t]);
    acc1[t] = VecF::fma(w1, xb, acc1[t]);
  }
}

template <int NT, bool Accumulate>
inline void gemm_micro(float* y, int64_t y_stride, const float* x, int64_t x_stride,
                       const float* packed, int rows, int64_t in) {
  constexpr int W = VecF::W;
  VecF acc0[NT], acc1[NT];
  for (int t = 0; t < NT; ++t) acc0[t] = acc1[t] = VecF::zero();
  // k in order (the sums' rounding does not change), two steps per iteration: one step's
  // loop overhead and loads take issue slots the FMAs need (51 -> 60 G multiply-adds/s on one
  // thread in a harness; three or four steps were slower again).
  int64_t k = 0;
  for (; k + 2 <= in; k += 2) {
    gemm_step<NT>(acc0, acc1, packed + k * kPanelRows, x + k, x_stride);
    gemm_step<NT>(acc0, acc1, packed + (k + 1) * kPanelRows, x + k + 1, x_stride);
  }
  if (k < in) gemm_step<NT>(acc0, acc1, packed + k * kPanelRows, x + k, x_stride);
  const int n0 = rows < W ? rows : W, n1 = rows - n0;
  for (int t = 0; t < NT; ++t) {
    float* yt = y + t * y_stride;
    if (Accumulate) {
      acc0[t] = acc0[t] + load_n(yt, n0);
      if (n1 > 0) acc1[t] = acc1[t] + load_n(yt + W, n1);
    }
    store_n(acc0[t], yt, n0);
    if (n1 > 0) store_n(acc1[t], yt + W, n1);
  }
}

template <bool Accumulate, int NT = kGemmTokens>
inline void gemm_micro_n(int nt, float* y, int64_t y_stride, const float* x, int64_t x_stride,
                         const float* packed, int rows, int64_t in) {
  if constexpr (NT >= 1) {
    if (nt == NT) return gemm_micro<NT, Accumulate>(y, y_stride, x, x_stride, packed, rows, in);
    gemm_micro_n<Accumulate, NT - 1>(nt, y, y_stride, x, x_stride, packed, rows, in);
  }
}

#if defined(PYRUNTIME_VEC_AVX512) && defined(__linux__)
// Prefill products of bf16 weights on AMX tiles (Intel's matrix unit, where the CPU and the OS
// allow it): one TDPBF16PS multiplies 16 weight rows x 32 features by 32 features x 16 tokens
// into 16 x 16 float32 sums, pairs of products at a time. The tokens are rounded to a high and
// a low bf16 part (x = hi + lo to 16 bits of mantissa) and both multiplied: float32-grade sums
// at a fraction of the FMA path's time (torch's bf16 matmul on this CPU prefills SmolLM2 at
// 1.5x the FMA path). PYRUNTIME_NO_AMX in the environment keeps the FMA path (A/B runs).
namespace amx {

#define PYRUNTIME_AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512bf16")))

inline bool available() {
  static const bool ok = [] {
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;  // Linux: ask for the tile state
    return __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
           __builtin_cpu_supports("avx512bf16") && !std::getenv("PYRUNTIME_NO_AMX") &&
           syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}

constexpr int kTile = 16;       // weight rows per A tile, tokens per B tile
constexpr int kChunk = 32;      // features per tile product
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-3 sums, 4-5 weights, 6-7 tokens: every tile 16 rows of 64 bytes. (Not
// _tile_loadconfig: GCC 12's declares only 8 bytes of the configuration read, and the stores to
// the rest were dropped as dead.)
PYRUNTIME_AMX_TARGET inline void configure() {
  TileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.rows[t] = kTile;
    c.colsb[t] = 64;
  }
  asm volatile("ldtilecfg %0" ::"m"(c));
}

// Packs tokens [0, tokens) of x [*, in] as B tiles: for token block b and chunk c, the tile
// xp + ((b * chunks + c) * 2 + part) * 512: row p holds features c*32 + 2p, 2p + 1 of each of
// the block's 16 tokens (part 0 the high bf16 of x, part 1 the low); tokens past the end zero.
PYRUNTIME_AMX_TARGET inline void pack_tokens(bf16* xp, const float* x, int64_t x_stride, int64_t tokens,
                                             int64_t in) {
  const int64_t chunks = in / kChunk, blocks = ceil_div(tokens, kTile);
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t c = 0; c < chunks; ++c) {
      VecF hi[kTile], lo[kTile];  // token t's 16 feature pairs, one per 32-bit lane
      for (int t = 0; t < kTile; ++t) {
        const int64_t tok = b * kTile + t;
        if (tok >= tokens) {
          hi[t] = lo[t] = VecF::zero();
          continue;
        }
        const float* src = x + tok * x_stride + c * kChunk;
        const __m512 a = _mm512_loadu_ps(src), bb = _mm512_loadu_ps(src + 16);
        // Even and odd features of the chunk, then rounded pairs (even in the low half).
        const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        const __m512 e = _mm512_permutex2var_ps(a, even, bb), o = _mm512_permutex2var_ps(a, odd, bb);
        const __m512i eh = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(e));
        const __m512i oh = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(o));
        hi[t] = VecF(_mm512_castsi512_ps(_mm512_or_si512(eh, _mm512_slli_epi32(oh, 16))));
        const __m512 er = _mm512_sub_ps(e, _mm512_castsi512_ps(_mm512_slli_epi32(eh, 16)));
        const __m512 orr = _mm512_sub_ps(o, _mm512_castsi512_ps(_mm512_slli_epi32(oh, 16)));
        const __m512i el = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(er));
        const __m512i ol = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(orr));
        lo[t] = VecF(_mm512_castsi512_ps(_mm512_or_si512(el, _mm512_slli_epi32(ol, 16))));
      }
      transpose16(hi);  // now pair p of every token
      transpose16(lo);
      bf16* dst = xp + (b * chunks + c) * 2 * 512;
      for (int p = 0; p < kTile; ++p) {
        hi[p].store(reinterpret_cast<float*>(dst) + p * 16);
        lo[p].store(reinterpret_cast<float*>(dst + 512) + p * 16);
      }
    }
}

// y[t, r + n] (+)= sums[n][t] for the valid tokens of a block.
template <bool Accumulate>
PYRUNTIME_AMX_TARGET inline void store_sums(float* y, int64_t y_stride, const float* sums, int ntok) {
  VecF t[kTile];
  for (int n = 0; n < kTile; ++n) t[n] = VecF::load(sums + n * kTile);
  transpose16(t);  // t[token] = its 16 rows' sums
  for (int k = 0; k < ntok; ++k) {
    float* out = y + k * y_stride;
    if (Accumulate) (t[k] + VecF::load(out)).store(out);
    else t[k].store(out);
  }
}

// Rows [r, r + 16 * RB) times token blocks [b, b + TB) (RB, TB of 1 or 2).
#define PYRUNTIME_AMX_DP(c, a, b) _tile_dpbf16ps(c, a, b)
template <int RB, int TB, bool Accumulate>
PYRUNTIME_AMX_TARGET inline void block(float* y, int64_t y_stride, const bf16* w, int64_t w_stride,
                                       const bf16* xp, int64_t in, int64_t b, int64_t tokens, float* sums) {
  const int64_t chunks = in / kChunk;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t c = 0; c < chunks; ++c) {
    const bf16* x0 = xp + (b * chunks + c) * 2 * 512;
    const bf16* x1 = x0 + chunks * 2 * 512;  // the next token block's
    _tile_loadd(4, w + c * kChunk, w_stride * 2);
    if constexpr (RB == 2) _tile_loadd(5, w + kTile * w_stride + c * kChunk, w_stride * 2);
    for (int part = 0; part < 2; ++part) {
      _tile_loadd(6, x0 + part * 512, 64);
      if constexpr (TB == 2) _tile_loadd(7, x1 + part * 512, 64);
      PYRUNTIME_AMX_DP(0, 4, 6);
      if constexpr (TB == 2) PYRUNTIME_AMX_DP(1, 4, 7);
      if constexpr (RB == 2) PYRUNTIME_AMX_DP(2, 5, 6);
      if constexpr (RB == 2 && TB == 2) PYRUNTIME_AMX_DP(3, 5, 7);
    }
  }
  const auto out = [&](int rb, int tb) {
    const int64_t t0 = (b + tb) * kTile;
    const int ntok = static_cast<int>(std::min<int64_t>(kTile, tokens - t0));
    store_sums<Accumulate>(y + t0 * y_stride + rb * kTile, y_stride, sums, ntok);
  };
  _tile_stored(0, sums, 64);
  out(0, 0);
  if constexpr (TB == 2) {
    _tile_stored(1, sums, 64);
    out(0, 1);
  }
  if constexpr (RB == 2) {
    _tile_stored(2, sums, 64);
    out(1, 0);
  }
  if constexpr (RB == 2 && TB == 2) {
    _tile_stored(3, sums, 64);
    out(1, 1);
  }
}
#undef PYRUNTIME_AMX_DP

// gemm_rows for plain bf16 rows with in % 32 == 0: the whole 16-row blocks of [row_begin,
// row_end) on tiles; returns the first row it left (the rest: < 16 rows).
template <bool Accumulate>
PYRUNTIME_AMX_TARGET inline int64_t rows(float* y, int64_t y_stride, const float* x, int64_t x_stride,
                                         const DenseRows<bf16>& w, int64_t tokens, int64_t in, int64_t row_begin,
                                         int64_t row_end) {
  thread_local std::vector<bf16> xp;
  const int64_t blocks = ceil_div(tokens, kTile);
  if (static_cast<int64_t>(xp.size()) < blocks * kTile * in * 2) xp.resize(blocks * kTile * in * 2);
  alignas(64) float sums[kTile * kTile];
  configure();
  pack_tokens(xp.data(), x, x_stride, tokens, in);
  int64_t r = row_begin;
  const auto row_block = [&](auto rb) {
    constexpr int RB = decltype(rb)::value;
    const bf16* wr = w.w + r * w.stride;
    int64_t b = 0;
    for (; b + 2 <= blocks; b += 2)
      block<RB, 2, Accumulate>(y + r, y_stride, wr, w.stride, xp.data(), in, b, tokens, sums);
    if (b < blocks) block<RB, 1, Accumulate>(y + r, y_stride, wr, w.stride, xp.data(), in, b, tokens, sums);
    r += RB * kTile;
  };
  while (r + 2 * kTile <= row_end) row_block(std::integral_constant<int, 2>{});
  if (r + kTile <= row_end) row_block(std::integral_constant<int, 1>{});
  _tile_release();
  return r;
}
#undef PYRUNTIME_AMX_TARGET

}  // namespace amx
#endif

// y[t, r] (+)= w[r, :in] . x[t, :in] for rows [row_begin, row_end) and every token.
// \param packed gemm_pack_floats(in) floats of this thread's own
template <bool Accumulate = false, typename Rows>
inline void gemm_rows(float* y, int64_t y_stride, const float* x, int64_t x_stride, const Rows& w,
                      int64_t tokens, int64_t in, int64_t row_begin, int64_t row_end, float* packed) {
#if defined(PYRUNTIME_VEC_AVX512) && defined(__linux__)
  if constexpr (std::is_same_v<Rows, DenseRows<bf16>>)
    if (w.tile_stride == 0 && in % amx::kChunk == 0 && row_end - row_begin >= amx::kTile && amx::available())
      row_begin = amx::rows<Accumulate>(y, y_stride, x, x_stride, w, tokens, in, row_begin, row_end);
#endif
  for (int64_t r = row_begin; r < row_end; r += kPanelRows) {
    const int rows = static_cast<int>(row_end - r < kPanelRows ? row_end - r : kPanelRows);
    gemm_pack(packed, w.from(r), rows, in);
    for (int64_t t0 = 0; t0 < tokens; t0 += kGemmTokens) {
      const int nt = static_cast<int>(tokens - t0 < kGemmTokens ? tokens - t0 : kGemmTokens);
      gemm_micro_n<Accumulate>(nt, y + t0 * y_stride + r, y_stride, x + t0 * x_stride, x_stride, packed,
                               rows, in);
    }
  }
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

}  // namespace pyruntime::cpu::PYRUNTIME_ISA::detail
