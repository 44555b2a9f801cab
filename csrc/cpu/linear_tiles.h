// The portable register tiles of the decode products: R weight rows times a few tokens, FMAs
// over the level's vectors, any weight format of weight_rows.h.
#pragma once

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#include "block_rows.h"
#include "vec.h"
#include "weight_rows.h"

namespace pyruntime::cpu::PYRUNTIME_ISA::detail {

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
  } else if constexpr (IsBlockRows<Rows>::value) {
    // GGUF blocks: each block's scales read once per row, its values decoded W at a time.
    using B = typename Rows::B;
    const int64_t blocks = in / B::kValues;
    for (int64_t b = 0; b < blocks; ++b) {
      if constexpr (Prefetch)  // once per 64-byte line of each row ahead
        if ((b * B::kBytes) % 64 < B::kBytes)
          for (int r = 0; r < R; ++r) __builtin_prefetch(w.block(ahead + r, b), 0, 3);
      typename B::View views[R];
      for (int r = 0; r < R; ++r) views[r] = typename B::View(w.block(r, b));
      const float* xb = x + b * B::kValues;
      for (int j = 0; j < B::kValues; j += W) {
        VecF xv[NT];
        for (int t = 0; t < NT; ++t) xv[t] = VecF::load(xb + t * x_stride + j);
        for (int r = 0; r < R; ++r) {
          const VecF wv = views[r].at(j);
          for (int t = 0; t < NT; ++t) acc[r * NT + t] = VecF::fma(wv, xv[t], acc[r * NT + t]);
        }
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

// out[r * in + i] = value i of row r of w for r < R: GGUF blocks decoded to float32 as the
// tiles decode them (B::View::at), prefetching the rows `ahead` further on as the tiles do.
template <int R, WeightFormat F>
inline void decode_block_rows(float* out, const BlockRows<F>& w, int64_t in, int64_t ahead) {
  using B = typename BlockRows<F>::B;
  constexpr int W = VecF::W;
  const int64_t blocks = in / B::kValues;
  for (int64_t b = 0; b < blocks; ++b) {
    if ((b * B::kBytes) % 64 < B::kBytes)  // once per 64-byte line of each row ahead
      for (int r = 0; r < R; ++r) __builtin_prefetch(w.block(ahead + r, b), 0, 3);
    for (int r = 0; r < R; ++r) {
      const typename B::View view(w.block(r, b));
      for (int j = 0; j < B::kValues; j += W) view.at(j).store(out + r * in + b * B::kValues + j);
    }
  }
}

// This thread's buffer of at least `floats` decoded weights (grows, then stays).
inline float* decode_buffer(int64_t floats) {
  thread_local std::vector<float> decoded;
  if (static_cast<int64_t>(decoded.size()) < floats) decoded.resize(floats);
  return decoded.data();
}

// y[t, r] (+)= decoded row r . x[t] for `rows` float32 rows (a multiple of R, `in` apart) and
// every token: four tokens at a time cross all the rows, R rows a tile.
template <int R, bool Accumulate>
inline void decoded_tiles(float* y, int64_t y_stride, const float* x, int64_t x_stride, const float* decoded,
                          int64_t rows, int64_t in, int64_t tokens) {
  constexpr int kTokens = 4;
  for (int64_t t0 = 0; t0 < tokens; t0 += kTokens) {
    const float* xt = x + t0 * x_stride;
    const int nt = static_cast<int>(std::min<int64_t>(kTokens, tokens - t0));
    for (int64_t j = 0; j < rows; j += R) {
      const DenseRows<float> dense{decoded + j * in, in};
      float* yt = y + t0 * y_stride + j;
      switch (nt) {
        case 4: linear_tile<R, 4, Accumulate, false>(yt, y_stride, xt, x_stride, dense, in, 0); break;
        case 3: linear_tile<R, 3, Accumulate, false>(yt, y_stride, xt, x_stride, dense, in, 0); break;
        case 2: linear_tile<R, 2, Accumulate, false>(yt, y_stride, xt, x_stride, dense, in, 0); break;
        default: linear_tile<R, 1, Accumulate, false>(yt, y_stride, xt, x_stride, dense, in, 0); break;
      }
    }
  }
}

// R rows [r, r + R) times every token, four (int8: two) tokens at a time: the rows stay in L1 while
// the tokens stream past (a prefill chunk reads each weight once). The first group of
// tokens prefetches the rows ahead (prefetch_rows_ahead).
template <int R, bool Accumulate, typename Rows>
inline void linear_row_block(float* y, int64_t y_stride, const float* x, int64_t x_stride,
                             const Rows& w, int64_t tokens, int64_t in, int64_t ahead, int64_t y_row_step = 1) {
  // int8 tiles hold a partial sum per accumulator too: fewer tokens per tile keep both in registers.
  constexpr int kTokens = IsGrouped<Rows>::value ? 2 : 4;
  if constexpr (IsBlockRows<Rows>::value) {
    if (tokens > kTokens) {
      // More tokens than a tile takes: the R rows decoded to float32 once, not once per tile,
      // then the float tiles over them: the same FMAs in the same order (a block's values W at
      // a time, blocks in order), so the same sums as the block tiles give.
      float* decoded = decode_buffer(R * in);
      decode_block_rows<R>(decoded, w, in, ahead);
      decoded_tiles<R, Accumulate>(y, y_stride, x, x_stride, decoded, R, in, tokens);
      return;
    }
  }
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

// Rows [row_begin, row_end) of GGUF blocks times more tokens than a tile takes, R rows a tile,
// in panels of rows decoded to float32 once (about 128 KB: in L2) that every group of four
// tokens then crosses, so that the tokens' x stays in L1 over a panel instead of streaming from
// L2 for each R rows. Each (row, token) sum takes the same FMAs in the same order as
// linear_row_block's, whatever the panel. Returns the first row not done (fewer than R left).
template <int R, bool Accumulate, WeightFormat F>
inline int64_t decoded_row_panels(float* y, int64_t y_stride, const float* x, int64_t x_stride,
                                  const BlockRows<F>& w, int64_t tokens, int64_t in, int64_t row_begin,
                                  int64_t row_end, int64_t ahead) {
  const int64_t panel_rows = std::max<int64_t>(R, (int64_t(32) * 1024 / in) / R * R);
  float* decoded = decode_buffer(panel_rows * in);
  int64_t r = row_begin;
  while (r + R <= row_end) {
    const int64_t rows = std::min(panel_rows, (row_end - r) / R * R);
    for (int64_t j = 0; j < rows; j += R) decode_block_rows<R>(decoded + j * in, w.from(r + j), in, ahead);
    decoded_tiles<R, Accumulate>(y + r, y_stride, x, x_stride, decoded, rows, in, tokens);
    r += rows;
  }
  return r;
}

}  // namespace pyruntime::cpu::PYRUNTIME_ISA::detail
