// Prefill products on AMX tiles in bf16 (the avx512 levels, where the CPU and the OS allow it):
// bf16 weights as they are, the other formats decoded to float32 and split in two bf16 parts.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "vec.h"
#include "weight_rows.h"

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace pyruntime::cpu::PYRUNTIME_ISA::detail {

#if defined(PYRUNTIME_VEC_AVX512) && defined(__linux__)
// Prefill products of bf16 weights on AMX tiles (Intel's matrix unit, where the CPU and the OS
// allow it): one TDPBF16PS multiplies 16 weight rows x 32 features by 32 features x 16 tokens
// into 16 x 16 float32 sums, pairs of products at a time. The tokens are rounded to a high and
// a low bf16 part (x = hi + lo to 16 bits of mantissa) and both multiplied; weights that are not
// bf16 (the GGUF block formats, decoded to float32 a panel at a time) are split the same way:
// each product within ~2^-16 of its float32 value (the split keeps 16 bits of mantissa), the
// sums in float32, at a fraction of the FMA path's time. PYRUNTIME_NO_AMX in the environment
// keeps the FMA path (A/B runs).
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

// Where block() finds its weight tiles: row block rb's (16 rows) tile of chunk c starts at
// base + rb * rb_step + (c - c_first) * c_step, its rows `stride` bytes apart; with a low part
// (Lo) the low bf16 halves lie `lo` elements further.
struct WeightTiles {
  const bf16* base;
  int64_t rb_step, c_step, c_first, stride, lo;
  const bf16* at(int rb, int64_t c) const { return base + rb * rb_step + (c - c_first) * c_step; }
};

// Rows [r, r + 16 * RB) times token blocks [b, b + TB) (RB, TB of 1 or 2) over chunks
// [c0, c1) of the features. Without Lo: w x_hi + w x_lo. With Lo (weights split as w = w_hi +
// w_lo): w_hi x_lo + w_hi x_hi + w_lo x_hi (w_lo x_lo, ~2^-18 of the product, is below the split's
// own ~2^-16).
#define PYRUNTIME_AMX_DP(c, a, b) _tile_dpbf16ps(c, a, b)
template <int RB, int TB, bool Accumulate, bool Lo>
PYRUNTIME_AMX_TARGET inline void block(float* y, int64_t y_stride, const WeightTiles& w, const bf16* xp,
                                       int64_t chunks, int64_t c0, int64_t c1, int64_t b, int64_t tokens,
                                       float* sums) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const auto products = [] {
    PYRUNTIME_AMX_DP(0, 4, 6);
    if constexpr (TB == 2) PYRUNTIME_AMX_DP(1, 4, 7);
    if constexpr (RB == 2) PYRUNTIME_AMX_DP(2, 5, 6);
    if constexpr (RB == 2 && TB == 2) PYRUNTIME_AMX_DP(3, 5, 7);
  };
  const auto load_tokens = [&](const bf16* x0) {
    _tile_loadd(6, x0, 64);
    if constexpr (TB == 2) _tile_loadd(7, x0 + chunks * 2 * 512, 64);  // the next token block's
  };
  const auto load_weights = [&](int64_t c, int64_t offset) {
    _tile_loadd(4, w.at(0, c) + offset, w.stride);
    if constexpr (RB == 2) _tile_loadd(5, w.at(1, c) + offset, w.stride);
  };
  for (int64_t c = c0; c < c1; ++c) {
    const bf16* x0 = xp + (b * chunks + c) * 2 * 512;
    load_weights(c, 0);
    if constexpr (Lo) {
      load_tokens(x0 + 512);
      products();
      load_tokens(x0);
      products();
      load_weights(c, w.lo);
      products();
    } else {
      load_tokens(x0);
      products();
      load_tokens(x0 + 512);
      products();
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

// Rows [r, r + 16 * rb) x chunks [c0, c1) of w (any reader with load(row, i, 16) as float32)
// as A tiles in `panel`: the tile of row block j and chunk c at (j * (c1 - c0) + c - c0) *
// 512, rows 64 bytes apart; hi = bf16(w) there, lo = bf16(w - hi) `rb * (c1 - c0) * 512`
// elements further.
template <typename Rows>
PYRUNTIME_AMX_TARGET inline WeightTiles pack_weights(bf16* panel, const Rows& w, int64_t r, int rb, int64_t c0,
                                                     int64_t c1) {
  const int64_t n = c1 - c0, lo = rb * n * 512;
  for (int j = 0; j < rb * kTile; ++j)
    for (int64_t c = c0; c < c1; ++c) {
      bf16* dst = panel + ((j / kTile) * n + c - c0) * 512 + (j % kTile) * kChunk;
      for (int h = 0; h < kChunk; h += 16) {
        const __m512 v = w.load(r + j, c * kChunk + h, 16).v;
        const __m256i hi = (__m256i)_mm512_cvtneps_pbh(v);
        const __m512 back = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16));
        const __m256i rest = (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(v, back));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + h), hi);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + lo + h), rest);
      }
    }
  return {panel, n * 512, 512, c0, 64, lo};
}

// Chunks per piece of the features: a piece's packed tokens (64 KiB per block of 16 tokens)
// stay in L2 while every row block of the piece passes over them. Fixed, so that a token's sums
// do not depend on how many others share its call.
constexpr int64_t kPieceChunks = 32;

// gemm_rows on tiles for in % 32 == 0: plain bf16 rows straight from w; any other format's
// rows (weight_rows.h, block_rows.h) decoded to float32 and split into bf16 high and low parts
// by row blocks and pieces of the features. The whole 16-row blocks of [row_begin, row_end);
// returns the first row it left (the rest: < 16 rows).
template <bool Accumulate, typename Rows>
PYRUNTIME_AMX_TARGET inline int64_t rows(float* y, int64_t y_stride, const float* x, int64_t x_stride,
                                         const Rows& w, int64_t tokens, int64_t in, int64_t row_begin,
                                         int64_t row_end) {
  constexpr bool kDirect = std::is_same_v<Rows, DenseRows<bf16>>;
  thread_local std::vector<bf16> xp, panel;
  const int64_t blocks = ceil_div(tokens, kTile), chunks = in / kChunk;
  const int64_t piece = kPieceChunks;
  if (static_cast<int64_t>(xp.size()) < blocks * kTile * in * 2) xp.resize(blocks * kTile * in * 2);
  if (!kDirect && static_cast<int64_t>(panel.size()) < 2 * 2 * piece * 512) panel.resize(2 * 2 * piece * 512);
  alignas(64) float sums[kTile * kTile];
  configure();
  pack_tokens(xp.data(), x, x_stride, tokens, in);
  int64_t r = row_begin;
  for (int64_t c0 = 0; c0 < chunks; c0 += piece) {
    const int64_t c1 = std::min(chunks, c0 + piece);
    const auto row_block = [&](auto rb, auto accumulate) {
      constexpr int RB = decltype(rb)::value;
      constexpr bool Acc = decltype(accumulate)::value;
      WeightTiles t;
      if constexpr (kDirect)
        t = {w.w + r * w.stride, kTile * w.stride, kChunk, 0, w.stride * 2, 0};
      else
        t = pack_weights(panel.data(), w, r, RB, c0, c1);
      int64_t b = 0;
      for (; b + 2 <= blocks; b += 2)
        block<RB, 2, Acc, !kDirect>(y + r, y_stride, t, xp.data(), chunks, c0, c1, b, tokens, sums);
      if (b < blocks) block<RB, 1, Acc, !kDirect>(y + r, y_stride, t, xp.data(), chunks, c0, c1, b, tokens, sums);
      r += RB * kTile;
    };
    const auto row_blocks = [&](auto accumulate) {
      r = row_begin;
      while (r + 2 * kTile <= row_end) row_block(std::integral_constant<int, 2>{}, accumulate);
      if (r + kTile <= row_end) row_block(std::integral_constant<int, 1>{}, accumulate);
    };
    if (Accumulate || c0 > 0)
      row_blocks(std::true_type{});
    else
      row_blocks(std::false_type{});
  }
  _tile_release();
  return r;
}
#undef PYRUNTIME_AMX_TARGET

}  // namespace amx
#endif

}  // namespace pyruntime::cpu::PYRUNTIME_ISA::detail
