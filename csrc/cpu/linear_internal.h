// The CPU products: linear_rows (decode: a few tokens, every token's sums in the same order
// whatever the batch) and gemm_rows (prefill chunks), each choosing its path by weight format
// and by what the CPU has (VNNI, AMX) at run time; and a float conversion helper.
#pragma once

#include <type_traits>
#include <vector>

#include "block_rows.h"
#include "gemm.h"
#include "gemm_amx.h"
#include "linear_tiles.h"
#include "linear_vnni.h"
#include "side_by_side_internal.h"
#include "vec.h"
#include "weight_rows.h"

namespace pyruntime::cpu::PYRUNTIME_ISA::detail {

// y[t, r] (+)= w[r, :in] . x[t, :in] for rows r in [row_begin, row_end). Each token's sum is
// accumulated in the same order whatever the number of tokens, so a sequence's result
// does not depend on what else is in its batch.
// \param y [tokens, *] row stride y_stride, float32
// \param x [tokens, in] row stride x_stride, float32
// \param w weight rows (DenseRows, Q8Rows or BlockRows)
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
  if constexpr (IsGrouped<Rows>::value || IsBlockRows<Rows>::value) {
    constexpr int R = 4;
    const int64_t ahead4 = prefetch_rows_ahead<R, Rows>(in);
    int64_t r = row_begin;
    // Tokens whose x no longer fits in L1 beside the rows: panels of decoded rows (the same sums).
    if constexpr (IsBlockRows<Rows>::value)
      if (tokens > 4 && tokens * in * static_cast<int64_t>(sizeof(float)) > 40 * 1024)
        r = decoded_row_panels<R, Accumulate>(y, y_stride, x, x_stride, w, tokens, in, r, row_end, ahead4);
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

// y[t, r] (+)= w[r, :in] . x[t, :in] for rows [row_begin, row_end) and every token.
// \param packed gemm_pack_floats(in) floats of this thread's own
template <bool Accumulate = false, typename Rows>
inline void gemm_rows(float* y, int64_t y_stride, const float* x, int64_t x_stride, const Rows& w,
                      int64_t tokens, int64_t in, int64_t row_begin, int64_t row_end, float* packed) {
#if defined(PYRUNTIME_VEC_AVX512) && defined(__linux__)
  bool tiles = in % amx::kChunk == 0 && row_end - row_begin >= amx::kTile;
  if constexpr (std::is_same_v<Rows, DenseRows<bf16>>) tiles = tiles && w.tile_stride == 0;
  if constexpr (std::is_same_v<Rows, DenseRows<bf16>> || IsBlockRows<Rows>::value)
    if (tiles && amx::available())
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
