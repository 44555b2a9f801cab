// The integer GEMM of prompt chunks (many tokens per weight row) on AVX512-VNNI and on AVX2: the
// block formats with integer products (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K) against activations
// quantised to 8 bits as the decode products quantise them (quantize_q8: Q8Dot<F>::kGroup values
// per scale) or to 16 bits (quantize_q16), once per chunk for every product that reads them.
//
// A panel of kQ8PanelRows weight rows (16 on AVX-512, 8 on AVX2) is unpacked once per chunk into
// unsigned bytes, four consecutive values of each row side by side ([in / 4][rows][4]; 16-bit:
// int16, two side by side), with each sub-block's scale and min as float32 per row (value =
// q * scale + min, exactly the value gguf.quants.dequantize gives: an f16 times a small
// integer). One vpdpbusd (AVX2: vpmaddubsw and vpmaddwd) then multiplies 4 values of the panel's
// rows by 4 values of a token into one int32 sum per row; every sub-block's exact integer sum is
// converted once and scaled by the rows' scales, the min terms come from the token's sums of its
// quantised values, and each activation group's total is scaled by the token's scale. A token's
// sums run over k in the same order whichever tokens share the chunk.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <cstring>
#include <type_traits>
#include <vector>

#include "block_rows.h"
#include "gemm.h"
#include "gemm_amx.h"
#include "linear_q8.h"
#include "linear_vnni.h"
#include "vec.h"

namespace pyruntime::cpu::PYRUNTIME_ISA::detail {

// A chunk's activations quantised once for every product that reads them, to A (int8_t:
// quantize_q8; int16_t: quantize_q16) in groups of `group`: token t's values at q + t * in, its
// scales at d + t * (in / group), its sums of 16 values at s + t * (in / 16). (The group is the
// format's: Q8Dot<F>::kGroup for 8 bits, kQ16Group for 16.)
template <typename A>
struct ActChunk {
  using Sum = std::conditional_t<sizeof(A) == 1, int16_t, int32_t>;
  const A* q = nullptr;
  const float* d = nullptr;
  const Sum* s = nullptr;
  int64_t in = 0;
};
using Q8Chunk = ActChunk<int8_t>;
using Q16Chunk = ActChunk<int16_t>;

// The prompts' 16-bit activations: groups of kQ16Group values, each as int16 with one float
// scale (the group's largest |x| maps to 32767, rounded to nearest even: x to ~1.5e-5 of that),
// and the sums of every 16 of its values.
constexpr int kQ16Group = 32;
inline void quantize_q16(int16_t* q, float* d, int32_t* s, const float* x, int64_t in) {
  for (int64_t g0 = 0; g0 < in; g0 += kQ16Group) {
    const float* src = x + g0;
    float amax = 0.0f;
    bool finite = true;
    for (int i = 0; i < kQ16Group; ++i) {
      const float a = std::fabs(src[i]);
      finite = finite && a <= std::numeric_limits<float>::max();
      amax = std::max(amax, a);
    }
    // 0 for a zero group, and for one so small that 32767 / amax overflows (as quantize_q8). A
    // group holding an inf or a NaN: zeros with a NaN scale, so that the products come out NaN.
    const float inv = amax > 0.0f && finite ? 32767.0f / amax : 0.0f;
    const float iscale = inv <= std::numeric_limits<float>::max() ? inv : 0.0f;
    d[g0 / kQ16Group] = finite ? amax / 32767.0f : std::numeric_limits<float>::quiet_NaN();
    for (int i = 0; i < kQ16Group; ++i)
      q[g0 + i] = finite ? static_cast<int16_t>(std::nearbyint(src[i] * iscale)) : int16_t{0};
    for (int k = 0; k < kQ16Group / 16; ++k) {
      int32_t sum = 0;
      for (int i = 0; i < 16; ++i) sum += q[g0 + 16 * k + i];
      s[g0 / 16 + k] = sum;
    }
  }
}

// q[i] = p[i] & 15, q[16 + i] = p[i] >> 4 for i < 16: a 32-value block's nibbles in order.
inline void split_nibbles(const uint8_t* p, uint8_t* q) {
#if defined(PYRUNTIME_Q8_SIMD)
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), low4 = _mm_set1_epi8(15);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm_and_si128(v, low4));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16), _mm_and_si128(_mm_srli_epi16(v, 4), low4));
#else
  for (int i = 0; i < 16; ++i) {
    q[i] = p[i] & 15;
    q[16 + i] = p[i] >> 4;
  }
#endif
}

// Q8Unpack<F>::block(blk, q, scale, min): block blk's values as unsigned bytes q[kValues] (at
// most kMax) and,
// per sub-block of kSub values, the float32 scale and min with value = q * scale + min; where
// min is -kOffset * scale (kOffset > 0), value = (q - kOffset) * scale.
template <WeightFormat F>
struct Q8Unpack;

template <>
struct Q8Unpack<WeightFormat::Q4_0> {  // d (q - 8)
  static constexpr int kSub = 32, kOffset = 8, kMax = 15;
  static void block(const uint8_t* b, uint8_t* q, float* scale, float* min) {
    split_nibbles(b + 2, q);
    scale[0] = f16_at(b);
    min[0] = -8.0f * scale[0];
  }
};

template <>
struct Q8Unpack<WeightFormat::Q4_1> {  // d q + m
  static constexpr int kSub = 32, kOffset = 0, kMax = 15;
  static void block(const uint8_t* b, uint8_t* q, float* scale, float* min) {
    split_nibbles(b + 4, q);
    scale[0] = f16_at(b);
    min[0] = f16_at(b + 2);
  }
};

template <>
struct Q8Unpack<WeightFormat::Q8_0> {  // d w, w int8: (w + 128) d - 128 d
  static constexpr int kSub = 32, kOffset = 128, kMax = 255;
  static void block(const uint8_t* b, uint8_t* q, float* scale, float* min) {
    for (int i = 0; i < 32; ++i) q[i] = b[2 + i] ^ 0x80;
    scale[0] = f16_at(b);
    min[0] = -128.0f * scale[0];
  }
};

template <bool Five>
struct Q8UnpackK45 {  // d sc q - dmin m per sub-block of 32 (Q4_K; Q5_K with a fifth bit)
  static constexpr int kSub = 32, kOffset = 0, kMax = Five ? 31 : 15;
  static void block(const uint8_t* b, uint8_t* q, float* scale, float* min) {
    const uint8_t* qs = b + (Five ? 48 : 16);
    for (int c = 0; c < 8; ++c) {
      for (int l = 0; l < 32; ++l) {
        int v = (qs[32 * (c / 2) + l] >> (4 * (c % 2))) & 15;
        if constexpr (Five) v |= ((b[16 + l] >> c) & 1) << 4;
        q[32 * c + l] = static_cast<uint8_t>(v);
      }
      int sc, m;
      k4_scale_min(b + 4, c, sc, m);
      scale[c] = f16_at(b) * static_cast<float>(sc);
      min[c] = -(f16_at(b + 2) * static_cast<float>(m));
    }
  }
};
template <>
struct Q8Unpack<WeightFormat::Q4_K> : Q8UnpackK45<false> {};
template <>
struct Q8Unpack<WeightFormat::Q5_K> : Q8UnpackK45<true> {};

template <>
struct Q8Unpack<WeightFormat::Q6_K> {  // d sc (q - 32) per sub-block of 16
  static constexpr int kSub = 16, kOffset = 32, kMax = 63;
  static void block(const uint8_t* b, uint8_t* q, float* scale, float* min) {
    for (int h = 0; h < 2; ++h) {  // value 128 h + 32 c + l: ql's nibble, qh's bits 2c, 2c + 1
      const uint8_t *ql = b + 64 * h, *qh = b + 128 + 32 * h;
      for (int l = 0; l < 32; ++l) {
        q[128 * h + l] = static_cast<uint8_t>((ql[l] & 15) | ((qh[l] & 3) << 4));
        q[128 * h + 32 + l] = static_cast<uint8_t>((ql[32 + l] & 15) | (((qh[l] >> 2) & 3) << 4));
        q[128 * h + 64 + l] = static_cast<uint8_t>((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
        q[128 * h + 96 + l] = static_cast<uint8_t>((ql[32 + l] >> 4) | (((qh[l] >> 6) & 3) << 4));
      }
    }
    const float d = f16_at(b + 208);
    for (int s = 0; s < 16; ++s) {
      scale[s] = d * static_cast<float>(static_cast<int8_t>(b[192 + s]));
      min[s] = -32.0f * scale[s];
    }
  }
};

// One int32 per row in a vector: 16 rows on AVX-512, 8 on AVX2.
#if defined(PYRUNTIME_VEC_AVX512)
constexpr int kQ8PanelRows = 16;
#else
constexpr int kQ8PanelRows = 8;
#endif

// Q8_0's weights against 8-bit activations on AVX2: the panel holds them signed (w, no min),
// since vpmaddubsw's pair of unsigned (w + 128) x signed products can pass int16. The product
// takes |w| x (x with w's sign) instead: at most 2 x 128 x 127.
template <WeightFormat F, typename A>
constexpr bool kSignedPanel = F == WeightFormat::Q8_0 && sizeof(A) == 1 && kQ8PanelRows == 8;

// Weights against activations A: unsigned bytes q (int8 activations), or int16 q - kOffset
// (int16 activations; the formats with kOffset then have no min term), or kSignedPanel's.
template <WeightFormat F, typename A>
constexpr bool kPanelMins = !kSignedPanel<F, A> && (sizeof(A) == 1 || Q8Unpack<F>::kOffset == 0);

// Bytes of a packed panel of `in` columns: the values [in / K][kQ8PanelRows][K] (K = 4 bytes or
// 2 int16), then the scales and, where kPanelMins, the mins, each [in / kSub][kQ8PanelRows]
// float32.
template <WeightFormat F, typename A>
constexpr int64_t q8_panel_bytes(int64_t in) {
  return in * kQ8PanelRows * static_cast<int64_t>(sizeof(A)) +
         2 * (in / Q8Unpack<F>::kSub) * kQ8PanelRows * static_cast<int64_t>(sizeof(float));
}

// The panel of w's first `rows` (<= kQ8PanelRows) rows; rows past them are zeros.
template <WeightFormat F, typename A>
inline void q8_pack(uint8_t* packed, const BlockRows<F>& w, int rows, int64_t in) {
  using U = Q8Unpack<F>;
  constexpr int V = Block<F>::kValues, S = U::kSub, NS = V / S, P = kQ8PanelRows;
  constexpr int K = 4 / sizeof(A);  // values of a row side by side: one 32-bit lane
  float* scales = reinterpret_cast<float*>(packed + in * P * sizeof(A));
  float* mins = scales + (in / S) * P;
  alignas(64) uint8_t q[V];
  alignas(64) A v[V];
  float sc[NS], mn[NS];
  for (int64_t b = 0; b < in / V; ++b)  // block by block: the panel's bytes written stay in L1
    for (int r = 0; r < P; ++r) {
      if (r < rows) {
        U::block(w.block(r, b), q, sc, mn);
      } else {
        std::memset(q, sizeof(A) == 1 && !kSignedPanel<F, A> ? 0 : U::kOffset, V);
        for (int j = 0; j < NS; ++j) sc[j] = mn[j] = 0.0f;
      }
      if constexpr (sizeof(A) == 1 && !kSignedPanel<F, A>) {
        std::memcpy(v, q, V);
      } else {  // int16, or kSignedPanel's int8: q - kOffset
        for (int i = 0; i < V; ++i) v[i] = static_cast<A>(q[i] - U::kOffset);
      }
      uint8_t* dst = packed + (b * V * P + K * r) * sizeof(A);
      for (int k = 0; k < V / K; ++k) std::memcpy(dst + k * 4 * P, v + K * k, 4);
      for (int j = 0; j < NS; ++j) {
        scales[(b * NS + j) * P + r] = sc[j];
        if constexpr (kPanelMins<F, A>) mins[(b * NS + j) * P + r] = mn[j];
      }
    }
}

// The micro-kernel's integer part per level: IVec (one int32 per panel row), kQ8GemmTokens, and
// sub_sums: the exact integer sums of one sub-block of S values of the panel against NT tokens'
// quantised values; the micro-kernel itself is shared, in the same namespace (vnni on AVX-512:
// the functions holding VNNI instructions; madd on AVX2), aliased as q8k.
#if defined(PYRUNTIME_VEC_AVX512)
#define PYRUNTIME_Q8_GEMM __attribute__((target("avx512f,avx512bw,avx512vnni")))
#define PYRUNTIME_Q8_NS vnni
namespace vnni {

using IVec = __m512i;
constexpr int kQ8GemmTokens = 8;  // 3 x 8 accumulators (integer, group, total) of the 32 registers

// vpdpbusd: u8 weights x s8 activations, four per lane; vpdpwssd: int16 x int16, two per lane.
template <WeightFormat F, typename A, int NT, int S>
PYRUNTIME_Q8_GEMM inline void sub_sums(IVec* isum, const uint8_t* packed, const A* const* xq, int64_t k0) {
  static_assert(!kSignedPanel<F, A>, "vpdpbusd's int32 sums take Q8_0's unsigned bytes");
  constexpr int P = kQ8PanelRows, K = 4 / sizeof(A);
  for (int t = 0; t < NT; ++t) isum[t] = _mm512_setzero_si512();
  for (int k = 0; k < S; k += K) {
    const __m512i wv = _mm512_loadu_si512(packed + (k0 + k) * P * sizeof(A));
    for (int t = 0; t < NT; ++t) {
      int32_t xv;
      std::memcpy(&xv, xq[t] + k0 + k, 4);
      if constexpr (sizeof(A) == 1)
        isum[t] = _mm512_dpbusd_epi32(isum[t], wv, _mm512_set1_epi32(xv));
      else
        isum[t] = _mm512_dpwssd_epi32(isum[t], wv, _mm512_set1_epi32(xv));
    }
  }
}

PYRUNTIME_Q8_GEMM inline VecF sums_to_float(IVec v) { return VecF(_mm512_cvtepi32_ps(v)); }

}  // namespace vnni
#elif defined(PYRUNTIME_VEC_AVX2)
#define PYRUNTIME_Q8_GEMM
#define PYRUNTIME_Q8_NS madd
namespace madd {  // vpmaddubsw + vpmaddwd, 8-bit activations

using IVec = __m256i;
constexpr int kQ8GemmTokens = 4;  // 3 or 4 x 4 accumulators of the 16 registers

// vpmaddubsw steps (of 4 values) of F's panel whose int16 pair sums add up in int16: each is at
// most 2 x kMax x 127 (kSignedPanel's 2 x 128 x 127), and their sum stays under 2^15; at most a
// sub-block's.
template <WeightFormat F, typename A>
constexpr int int16_steps() {
  const int most = kSignedPanel<F, A> ? 2 * 128 * 127 : 2 * Q8Unpack<F>::kMax * 127;
  int n = 1;
  while (2 * n * most <= 32767 && 2 * n * 4 <= Q8Unpack<F>::kSub) n *= 2;
  return n;
}

// v, kept a register at this point: a running sum stays one chain of adds (GCC's reassociation
// would otherwise form every step's products first, more than the registers hold, and spill them).
inline __m256i in_register(__m256i v) {
  __asm__("" : "+x"(v));
  return v;
}

// vpmaddubsw (kSignedPanel's: |w| against x with w's sign), int16_steps of them added in int16,
// then vpmaddwd by ones into int32.
template <WeightFormat F, typename A, int NT, int S>
inline void sub_sums(IVec* isum, const uint8_t* packed, const A* const* xq, int64_t k0) {
  static_assert(sizeof(A) == 1, "8-bit activations (q16_prompt_products)");
  constexpr int P = kQ8PanelRows, K = 4, Run = int16_steps<F, A>();
  constexpr bool Signed = kSignedPanel<F, A>;
  const __m256i ones = _mm256_set1_epi16(1);
#pragma GCC unroll 8
  for (int k = 0; k < S; k += Run * K) {
    __m256i p[NT];
#pragma GCC unroll 8
    for (int i = 0; i < Run; ++i) {
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(packed + (k0 + k + i * K) * P));
      const __m256i wa = Signed ? _mm256_abs_epi8(wv) : wv;
      for (int t = 0; t < NT; ++t) {
        int32_t x4;
        std::memcpy(&x4, xq[t] + k0 + k + i * K, 4);
        __m256i xv = _mm256_set1_epi32(x4);
        if constexpr (Signed) xv = _mm256_sign_epi8(xv, wv);
        const __m256i m = _mm256_maddubs_epi16(wa, xv);
        p[t] = i == 0 ? m : in_register(_mm256_add_epi16(p[t], m));
      }
    }
    for (int t = 0; t < NT; ++t) {
      const __m256i s32 = _mm256_madd_epi16(p[t], ones);
      isum[t] = k == 0 ? s32 : _mm256_add_epi32(isum[t], s32);
    }
  }
}

inline VecF sums_to_float(IVec v) { return VecF(_mm256_cvtepi32_ps(v)); }

}  // namespace madd
#endif

#if defined(PYRUNTIME_VEC_AVX512) || defined(PYRUNTIME_VEC_AVX2)
static_assert(kQ8PanelRows == VecF::W, "a panel row per float lane");
namespace PYRUNTIME_Q8_NS {

// y[t, r] (+)= packed panel row r . token t0 + t for t < NT, r < rows. xsum: the tokens' sums
// of quantised values per sub-block ([tokens][in / S] float32), times the token's scale where
// a sub-block is a whole activation group. Mins: the panel's min terms (kPanelMins).
template <WeightFormat F, typename A, int NT, bool Accumulate, int S, int G, bool Mins>
PYRUNTIME_Q8_GEMM inline void q8_micro(float* y, int64_t y_stride, const ActChunk<A>& x, int64_t t0,
                                       const float* xsum, const uint8_t* packed, int rows) {
  constexpr int P = kQ8PanelRows, kSubs = G / S;  // sub-blocks per activation group
  const int64_t in = x.in;
  const float* scales = reinterpret_cast<const float*>(packed + in * P * sizeof(A));
  const float* mins = scales + (in / S) * P;
  const A* xq[NT];
  const float *xd[NT], *xs[NT];
  for (int t = 0; t < NT; ++t) {
    xq[t] = x.q + (t0 + t) * in;
    xd[t] = x.d + (t0 + t) * (in / G);
    xs[t] = xsum + (t0 + t) * (in / S);
  }
  VecF acc[NT], part[NT];
  for (int t = 0; t < NT; ++t) acc[t] = part[t] = VecF::zero();
  for (int64_t g = 0; g < in / G; ++g) {
    for (int j = 0; j < kSubs; ++j) {
      const int64_t sub = g * kSubs + j;
      IVec isum[NT];
      sub_sums<F, A, NT, S>(isum, packed, xq, sub * S);
      const VecF sc = VecF::load(scales + sub * P);
      const VecF mn = Mins ? VecF::load(mins + sub * P) : VecF::zero();
      for (int t = 0; t < NT; ++t) {
        const VecF f = sums_to_float(isum[t]);
        if constexpr (kSubs == 1) {  // the token's scale per sub-block (xsum holds it too)
          acc[t] = VecF::fma(f * VecF::set1(xd[t][g]), sc, acc[t]);
          if constexpr (Mins) acc[t] = VecF::fma(VecF::set1(xs[t][sub]), mn, acc[t]);
        } else {
          part[t] = j == 0 ? f * sc : VecF::fma(f, sc, part[t]);
          if constexpr (Mins) part[t] = VecF::fma(VecF::set1(xs[t][sub]), mn, part[t]);
        }
      }
    }
    if constexpr (kSubs > 1)
      for (int t = 0; t < NT; ++t) acc[t] = VecF::fma(part[t], VecF::set1(xd[t][g]), acc[t]);
  }
  for (int t = 0; t < NT; ++t) {
    float* yt = y + t * y_stride;
    const VecF v = Accumulate ? acc[t] + VecF::load_partial(yt, rows) : acc[t];
    v.store_partial(yt, rows);
  }
}

template <WeightFormat F, typename A, bool Accumulate, int S, int G, bool Mins, int NT = kQ8GemmTokens>
PYRUNTIME_Q8_GEMM inline void q8_micro_n(int nt, float* y, int64_t y_stride, const ActChunk<A>& x, int64_t t0,
                                         const float* xsum, const uint8_t* packed, int rows) {
  if constexpr (NT >= 1) {
    if (nt == NT) return q8_micro<F, A, NT, Accumulate, S, G, Mins>(y, y_stride, x, t0, xsum, packed, rows);
    q8_micro_n<F, A, Accumulate, S, G, Mins, NT - 1>(nt, y, y_stride, x, t0, xsum, packed, rows);
  }
}
}  // namespace PYRUNTIME_Q8_NS
namespace q8k = PYRUNTIME_Q8_NS;
#undef PYRUNTIME_Q8_NS
#undef PYRUNTIME_Q8_GEMM
#endif

#if defined(PYRUNTIME_VEC_AVX512) || defined(PYRUNTIME_VEC_AVX2)
// y[t, r] (+)= w[r, :in] . token t of x for rows [row_begin, row_end) and `tokens` tokens,
// a panel of kQ8PanelRows rows at a time. x: 8-bit activations in Q8Dot<F>::kGroup groups, or
// 16-bit ones in kQ16Group groups. \param packed q8_panel_bytes<F, A>(in) bytes of this
// thread's own
template <bool Accumulate, WeightFormat F, typename A>
inline void q8_gemm_rows(float* y, int64_t y_stride, const ActChunk<A>& x, const BlockRows<F>& w, int64_t tokens,
                          int64_t row_begin, int64_t row_end, uint8_t* packed) {
  constexpr int S = Q8Unpack<F>::kSub, G = sizeof(A) == 1 ? Q8Dot<F>::kGroup : kQ16Group;
  constexpr bool kMins = kPanelMins<F, A>;
  static_assert(q8_panel_bytes<F, A>(Block<F>::kValues) <= Block<F>::kValues * kPanelRows * int64_t{sizeof(float)},
                "a panel fits the float GEMM's packed buffer (gemm_pack_floats(in) floats) it is given");
  static_assert(G % S == 0 && S % 16 == 0, "sub-blocks of 16 or 32 inside the activation groups");
  const int64_t in = x.in, subs = in / S;
  thread_local std::vector<float> xsum;  // grows, then stays
  if (kMins) {
    if (static_cast<int64_t>(xsum.size()) < tokens * subs) xsum.resize(tokens * subs);
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t j = 0; j < subs; ++j) {
        const auto* s = x.s + t * (in / 16) + j * (S / 16);
        const float sum = static_cast<float>(S == 16 ? s[0] : s[0] + s[1]);  // exact: under 2^24
        xsum[t * subs + j] = S == G ? sum * x.d[t * (in / G) + j] : sum;
      }
  }
  for (int64_t r = row_begin; r < row_end; r += kQ8PanelRows) {
    const int rows = static_cast<int>(row_end - r < kQ8PanelRows ? row_end - r : kQ8PanelRows);
    q8_pack<F, A>(packed, w.from(r), rows, in);
    for (int64_t t0 = 0; t0 < tokens; t0 += q8k::kQ8GemmTokens) {
      const int nt = static_cast<int>(std::min<int64_t>(tokens - t0, q8k::kQ8GemmTokens));
      q8k::q8_micro_n<F, A, Accumulate, S, G, kMins>(nt, y + t0 * y_stride + r, y_stride, x, t0, xsum.data(),
                                                     packed, rows);
    }
  }
}

#endif

// Whether this level multiplies prompt chunks with 8-bit activations (q8_gemm_rows): AVX2, and
// AVX512-VNNI without AMX (AMX hosts keep their bf16 tiles; AVX-512 without VNNI, float32).
inline bool q8_prompt_products() {
#if defined(PYRUNTIME_VEC_AVX512) && defined(__linux__)
  return vnni::available() && !amx::available();
#elif defined(PYRUNTIME_VEC_AVX512)
  return vnni::available();
#elif defined(PYRUNTIME_VEC_AVX2)
  return true;
#else
  return false;
#endif
}

// Whether it also takes 16-bit activations: with VNNI (vpdpwssd). AVX2 keeps float32 for them:
// its vpmaddwd takes two values per broadcast activation word (vpmaddubsw four), and that GEMM
// ran below the float32 one (benchmarks/README.md).
inline bool q16_prompt_products() {
#if defined(PYRUNTIME_VEC_AVX512)
  return q8_prompt_products();
#else
  return false;
#endif
}

// The bits of a prompt's activations in the integer products at this level for EngineSpec's
// prompt_bits `asked` (8, 16 or 32): asked where the level has that GEMM, else 32 (float32).
inline int prompt_bits_run(int asked) {
  if (asked == 8 && q8_prompt_products()) return 8;
  if (asked == 16 && q16_prompt_products()) return 16;
  return 32;
}

// The activation group of F's integer products (Q8Dot<F>::kGroup), or 0 where it has none.
template <WeightFormat F>
constexpr int q8_group() {
  if constexpr (kHasQ8Dot<F>)
    return Q8Dot<F>::kGroup;
  else
    return 0;
}

}  // namespace pyruntime::cpu::PYRUNTIME_ISA::detail
