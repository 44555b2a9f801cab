// bf16 prefill products on AMX tiles (the avx512 levels, where the CPU and the OS allow it).
#pragma once

#include <cstdlib>

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
// a low bf16 part (x = hi + lo to 16 bits of mantissa) and both multiplied: float32-grade sums
// at a fraction of the FMA path's time. PYRUNTIME_NO_AMX in the environment keeps the FMA path
// (A/B runs).
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

}  // namespace pyruntime::cpu::PYRUNTIME_ISA::detail
