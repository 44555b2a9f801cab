// Integer products of GGUF block rows (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K) with activations quantised
// to 8 bits, as llama.cpp does, for decode calls (prompts, and calls of more than
// kMaxRowTileTokens tokens, keep float32 activations): each token's x is cut into groups of
// Q8Dot<F>::kGroup values
// (32 for the 32-value formats, 256 for the k-quants), each group stored as int8 with one float
// scale (the group's largest |x| maps to 127, rounded to nearest even) and the sums of every 16
// of its values. A block's dot product is then exact integer arithmetic on the block's own
// quantised values (u8 x s8 multiply-adds: vpmaddubsw, then vpmaddwd with the sub-block scales),
// scaled once per block by the weight's and the activation's float scales; the k-quants' mins
// and the 32-value formats' offsets come from the activation sums. The SIMD levels use AVX2's
// 256-bit integer instructions (also on the AVX-512 levels); the scalar level the same integer
// arithmetic in plain C++, so every level computes the same sums. On the SIMD levels Q4_0 and
// Q4_1 (and Q8_0 where the CPU has AVX512-VNNI) take linear_q8_lanes.h's kernels instead (a
// weight row per vector lane: the same integer sums, one decoding of each block for every
// token of the call), or for a single token where q8_decode_rows() is 1 lane_order_rows (the
// rows read one after another, the lanes' sums in the lanes' order).
// Block layouts: block_rows.h (ggml-common.h's block_q4_0 ...).
#pragma once

#include <utility>

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "block_rows.h"
#include "linear_q8_lanes.h"
#include "pyruntime/cpu_kernels.h"
#include "vec.h"
#include "weight_rows.h"

namespace pyruntime::cpu::PYRUNTIME_ISA::detail {

#if defined(PYRUNTIME_VEC_AVX512) || defined(PYRUNTIME_VEC_AVX2)
#define PYRUNTIME_Q8_SIMD 1
#endif

// One token's quantised activations: q[i] * d[i / group] ~ x[i]; s[k] = q[16k] + .. + q[16k + 15].
struct Q8Token {
  const int8_t* q;
  const float* d;
  const int16_t* s;
};

// q, d, s of one token's x[:in] in groups of `group` values (a multiple of 32).
inline void quantize_q8(int8_t* q, float* d, int16_t* s, const float* x, int64_t in, int group) {
  for (int64_t g0 = 0; g0 < in; g0 += group) {
    const float* src = x + g0;
#if defined(PYRUNTIME_Q8_SIMD)
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 mx = _mm256_setzero_ps();
    for (int i = 0; i < group; i += 8) mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, _mm256_loadu_ps(src + i)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    const float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
#else
    float amax = 0.0f;
    for (int i = 0; i < group; ++i) amax = std::max(amax, std::fabs(src[i]));
#endif
    // 0 for a zero group, and for one so small (under ~3.7e-37) that 127 / amax overflows:
    // its values count as zeros.
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    const float iscale = inv <= std::numeric_limits<float>::max() ? inv : 0.0f;
    d[g0 / group] = amax / 127.0f;
    int8_t* dst = q + g0;
#if defined(PYRUNTIME_Q8_SIMD)
    const __m256 is = _mm256_set1_ps(iscale);
    for (int i = 0; i < group; i += 32) {
      __m256i v[4];
      for (int k = 0; k < 4; ++k) v[k] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(src + i + 8 * k), is));
      // Sums of each 16 (exact in int32), then the 32 values packed to bytes in order.
      for (int h = 0; h < 2; ++h) {
        const __m256i p = _mm256_add_epi32(v[2 * h], v[2 * h + 1]);
        __m128i t = _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
        t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
        t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
        s[(g0 + i) / 16 + h] = static_cast<int16_t>(_mm_cvtsi128_si32(t));
      }
      const __m256i w = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                          _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    }
#else
    for (int i = 0; i < group; ++i) dst[i] = static_cast<int8_t>(std::nearbyint(src[i] * iscale));
    for (int k = 0; k < group / 16; ++k) {
      int sum = 0;
      for (int i = 0; i < 16; ++i) sum += dst[16 * k + i];
      s[(g0 / 16) + k] = static_cast<int16_t>(sum);
    }
#endif
  }
}

#if defined(PYRUNTIME_Q8_SIMD)
using Q8Acc = __m256;
inline Q8Acc q8_zero() { return _mm256_setzero_ps(); }
inline float q8_sum(Q8Acc v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
inline __m256i load256(const void* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
// int32 lanes: sums of four u8 x s8 products (pairs in int16 first: |u| < 64 keeps them exact).
inline __m256i dot_u8s8(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}
// The same with each pair's sum times a 16-bit scale (the sub-block scales).
inline __m256i dot_u8s8_scaled(__m256i u, __m256i s, __m256i scale16) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scale16);
}
inline __m256 cvt(__m256i v) { return _mm256_cvtepi32_ps(v); }
// Byte shuffles that broadcast the int16 at index 2c (low 128 bits) and 2c + 1 (high 128 bits)
// of a vector holding the same 8 int16 scales in both halves: sub-blocks of 16 values.
inline __m256i pair_shuffle(int c) {
  const char lo0 = static_cast<char>(4 * c), lo1 = static_cast<char>(4 * c + 1);
  const char hi0 = static_cast<char>(4 * c + 2), hi1 = static_cast<char>(4 * c + 3);
  return _mm256_setr_epi8(lo0, lo1, lo0, lo1, lo0, lo1, lo0, lo1, lo0, lo1, lo0, lo1, lo0, lo1, lo0, lo1,
                          hi0, hi1, hi0, hi1, hi0, hi1, hi0, hi1, hi0, hi1, hi0, hi1, hi0, hi1, hi0, hi1);
}
// ... and of the int16 at index c in both halves: sub-blocks of 32.
inline __m256i one_shuffle(int c) {
  const char a = static_cast<char>(2 * c), b = static_cast<char>(2 * c + 1);
  return _mm256_setr_epi8(a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b);
}
#else
using Q8Acc = float;
inline Q8Acc q8_zero() { return 0.0f; }
inline float q8_sum(Q8Acc v) { return v; }
#endif

// Q8Dot<F>::block<NT>(blk, x, b, acc): acc[t] += block b of a row (at blk) . token t's block b.
template <WeightFormat F>
struct Q8Dot;

template <>
struct Q8Dot<WeightFormat::Q4_0> {  // d * (q - 8): sum = d dx (q . xq - 8 sum xq)
  static constexpr int kGroup = 32;
  template <int NT>
  static void block(const uint8_t* blk, const Q8Token* x, int64_t b, Q8Acc* acc) {
#if defined(PYRUNTIME_Q8_SIMD)
    static_assert(NT < 0, "on the SIMD levels this format takes the lane kernels (linear_q8_lanes.h)");
#else
    const float dw = f16_at(blk);
    for (int i = 0; i < NT; ++i) {
      const int8_t* xq = x[i].q + 32 * b;
      int sum = 0;
      for (int j = 0; j < 16; ++j) sum += ((blk[2 + j] & 15) - 8) * xq[j] + ((blk[2 + j] >> 4) - 8) * xq[16 + j];
      acc[i] += dw * x[i].d[b] * static_cast<float>(sum);
    }
#endif
  }
};

template <>
struct Q8Dot<WeightFormat::Q4_1> {  // d * q + m: sum = d dx (q . xq) + m dx sum xq
  static constexpr int kGroup = 32;
  template <int NT>
  static void block(const uint8_t* blk, const Q8Token* x, int64_t b, Q8Acc* acc) {
#if defined(PYRUNTIME_Q8_SIMD)
    static_assert(NT < 0, "on the SIMD levels this format takes the lane kernels (linear_q8_lanes.h)");
#else
    const float dw = f16_at(blk), mw = f16_at(blk + 2);
    for (int i = 0; i < NT; ++i) {
      const int8_t* xq = x[i].q + 32 * b;
      int sum = 0;
      for (int j = 0; j < 16; ++j) sum += (blk[4 + j] & 15) * xq[j] + (blk[4 + j] >> 4) * xq[16 + j];
      const float dx = x[i].d[b];
      acc[i] += dw * dx * static_cast<float>(sum);
      acc[i] += mw * (dx * static_cast<float>(x[i].s[2 * b] + x[i].s[2 * b + 1]));
    }
#endif
  }
};

template <>
struct Q8Dot<WeightFormat::Q8_0> {  // d * w, w int8
  static constexpr int kGroup = 32;
  template <int NT>
  static void block(const uint8_t* blk, const Q8Token* x, int64_t b, Q8Acc* acc) {
    const float dw = f16_at(blk);
#if defined(PYRUNTIME_Q8_SIMD)
    // s8 x s8 as |w| x (x with w's sign): |w| <= 128, so the int16 pair sums stay exact.
    const __m256i w = load256(blk + 2), aw = _mm256_abs_epi8(w);
    for (int i = 0; i < NT; ++i) {
      const __m256i dot = dot_u8s8(aw, _mm256_sign_epi8(load256(x[i].q + 32 * b), w));
      acc[i] = _mm256_fmadd_ps(cvt(dot), _mm256_set1_ps(dw * x[i].d[b]), acc[i]);
    }
#else
    const int8_t* w = reinterpret_cast<const int8_t*>(blk + 2);
    for (int i = 0; i < NT; ++i) {
      const int8_t* xq = x[i].q + 32 * b;
      int sum = 0;
      for (int j = 0; j < 32; ++j) sum += w[j] * xq[j];
      acc[i] += dw * x[i].d[b] * static_cast<float>(sum);
    }
#endif
  }
};

// Q4_K and Q5_K: value = d sc q - dmin m per sub-block of 32; sum = d dx sum_c sc_c (q . xq)_c
// - dmin dx sum_c m_c (sum xq)_c.
template <bool Five>
struct Q8DotK45 {
  static constexpr int kGroup = 256;
  static constexpr int kQs = Five ? 48 : 16;  // where the nibbles start
  template <int NT>
  static void block(const uint8_t* blk, const Q8Token* x, int64_t b, Q8Acc* acc) {
    const float d = f16_at(blk), dmin = f16_at(blk + 2);
    // The 8 6-bit scales and mins as bytes (k4_scale_min, four at a time).
    uint32_t u[3];
    std::memcpy(u, blk + 4, 12);
    const uint32_t sc_lo = u[0] & 0x3f3f3f3f, sc_hi = (u[2] & 0x0f0f0f0f) | (((u[0] >> 6) & 0x03030303) << 4);
    const uint32_t m_lo = u[1] & 0x3f3f3f3f, m_hi = ((u[2] >> 4) & 0x0f0f0f0f) | (((u[1] >> 6) & 0x03030303) << 4);
#if defined(PYRUNTIME_Q8_SIMD)
    const __m128i scm = _mm_setr_epi32(static_cast<int>(sc_lo), static_cast<int>(sc_hi), static_cast<int>(m_lo),
                                       static_cast<int>(m_hi));
    const __m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(scm));
    const __m256i mins = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(scm, scm));  // m0 m0 m1 m1 .. per 16
    const __m256i low4 = _mm256_set1_epi8(15);
    __m256i sumi[NT];
    for (auto& s : sumi) s = _mm256_setzero_si256();
    __m256i hb = Five ? load256(blk + 16) : _mm256_setzero_si256();
    for (int j = 0; j < 4; ++j) {
      const __m256i qb = load256(blk + kQs + 32 * j);
      __m256i lo = _mm256_and_si256(qb, low4), hi = _mm256_and_si256(_mm256_srli_epi16(qb, 4), low4);
      if constexpr (Five) {  // bit c of qh[l] is the fifth bit of sub-block c's value l
        const __m256i bit = _mm256_set1_epi8(16);
        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(hb, 4), bit));
        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(hb, 3), bit));
        hb = _mm256_srli_epi16(hb, 2);
      }
      const __m256i s_lo = _mm256_shuffle_epi8(sc16, one_shuffle(2 * j));
      const __m256i s_hi = _mm256_shuffle_epi8(sc16, one_shuffle(2 * j + 1));
      for (int i = 0; i < NT; ++i) {
        const int8_t* xq = x[i].q + 256 * b + 64 * j;
        sumi[i] = _mm256_add_epi32(sumi[i], _mm256_add_epi32(dot_u8s8_scaled(lo, load256(xq), s_lo),
                                                             dot_u8s8_scaled(hi, load256(xq + 32), s_hi)));
      }
    }
    for (int i = 0; i < NT; ++i) {
      const float dx = x[i].d[b];
      const __m256i mi = _mm256_madd_epi16(load256(x[i].s + 16 * b), mins);
      acc[i] = _mm256_fmadd_ps(cvt(sumi[i]), _mm256_set1_ps(d * dx), acc[i]);
      acc[i] = _mm256_fmadd_ps(cvt(mi), _mm256_set1_ps(-dmin * dx), acc[i]);
    }
#else
    uint8_t sc[8], m[8];
    std::memcpy(sc, &sc_lo, 4);
    std::memcpy(sc + 4, &sc_hi, 4);
    std::memcpy(m, &m_lo, 4);
    std::memcpy(m + 4, &m_hi, 4);
    for (int i = 0; i < NT; ++i) {
      const int8_t* xq = x[i].q + 256 * b;
      const int16_t* xs = x[i].s + 16 * b;
      int sumi = 0, summ = 0;
      for (int c = 0; c < 8; ++c) {
        int dot = 0;
        for (int l = 0; l < 32; ++l) {
          int q = (blk[kQs + 32 * (c / 2) + l] >> (4 * (c % 2))) & 15;
          if constexpr (Five) q |= ((blk[16 + l] >> c) & 1) << 4;
          dot += q * xq[32 * c + l];
        }
        sumi += sc[c] * dot;
        summ += m[c] * (xs[2 * c] + xs[2 * c + 1]);
      }
      acc[i] += d * x[i].d[b] * static_cast<float>(sumi) - dmin * x[i].d[b] * static_cast<float>(summ);
    }
#endif
  }
};
template <>
struct Q8Dot<WeightFormat::Q4_K> : Q8DotK45<false> {};
template <>
struct Q8Dot<WeightFormat::Q5_K> : Q8DotK45<true> {};

template <>
struct Q8Dot<WeightFormat::Q6_K> {  // d sc (q - 32) per sub-block of 16: sum = d dx sum_s sc_s ((q . xq)_s - 32 (sum xq)_s)
  static constexpr int kGroup = 256;
  template <int NT>
  static void block(const uint8_t* blk, const Q8Token* x, int64_t b, Q8Acc* acc) {
    const float d = f16_at(blk + 208);
    const int8_t* scales = reinterpret_cast<const int8_t*>(blk + 192);
#if defined(PYRUNTIME_Q8_SIMD)
    __m256i sumi[NT];
    // The -32 offset first: 32 sum_s sc_s (sum xq)_s, sixteen sub-blocks in eight int32 lanes.
    const __m256i sc_all = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales)));
    for (int i = 0; i < NT; ++i)
      sumi[i] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                 _mm256_slli_epi32(_mm256_madd_epi16(sc_all, load256(x[i].s + 16 * b)), 5));
    const __m256i low4 = _mm256_set1_epi8(15), high2 = _mm256_set1_epi8(0x30);
    for (int h = 0; h < 2; ++h) {
      const __m256i ql0 = load256(blk + 64 * h), ql1 = load256(blk + 64 * h + 32), qh = load256(blk + 128 + 32 * h);
      const __m256i sc16 = _mm256_broadcastsi128_si256(
          _mm_cvtepi8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(scales + 8 * h))));
      const __m256i q[4] = {
          _mm256_or_si256(_mm256_and_si256(ql0, low4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), high2)),
          _mm256_or_si256(_mm256_and_si256(ql1, low4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), high2)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4), _mm256_and_si256(qh, high2)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4),
                          _mm256_and_si256(_mm256_srli_epi16(qh, 2), high2))};
      for (int c = 0; c < 4; ++c) {
        const __m256i s = _mm256_shuffle_epi8(sc16, pair_shuffle(c));
        for (int i = 0; i < NT; ++i)
          sumi[i] = _mm256_add_epi32(sumi[i], dot_u8s8_scaled(q[c], load256(x[i].q + 256 * b + 128 * h + 32 * c), s));
      }
    }
    for (int i = 0; i < NT; ++i) acc[i] = _mm256_fmadd_ps(cvt(sumi[i]), _mm256_set1_ps(d * x[i].d[b]), acc[i]);
#else
    for (int i = 0; i < NT; ++i) {
      const int8_t* xq = x[i].q + 256 * b;
      int sumi = 0;
      for (int s = 0; s < 16; ++s) {
        int dot = 0;
        for (int l = 0; l < 16; ++l) {
          const int j = 16 * s + l, half = j / 128, u = j % 128;
          const int q = ((blk[half * 64 + u % 64] >> (4 * (u / 64))) & 15) |
                        (((blk[128 + half * 32 + u % 32] >> (2 * (u / 32))) & 3) << 4);
          dot += (q - 32) * xq[j];
        }
        sumi += scales[s] * dot;
      }
      acc[i] += d * x[i].d[b] * static_cast<float>(sumi);
    }
#endif
  }
};

// The block formats with an integer product here: those of kFormats with an activation group,
// which must be their Q8Dot's.
template <WeightFormat F>
constexpr bool kHasQ8Dot = format_activation_group(F) > 0;
template <WeightFormat F>
constexpr bool q8_group_agrees() {
  if constexpr (kHasQ8Dot<F>) return Q8Dot<F>::kGroup == format_activation_group(F);
  return true;
}
template <size_t... I>
constexpr bool q8_groups_agree(std::index_sequence<I...>) {
  return (q8_group_agrees<static_cast<WeightFormat>(I)>() && ...);
}
static_assert(q8_groups_agree(std::make_index_sequence<kNumFormats>()),
              "kFormats' activation groups are the integer products' (Q8Dot<F>::kGroup)");

// BlockRows whose products run in integers against 8-bit activations (the engine's choice).
template <WeightFormat F>
struct Q8BlockRows : BlockRows<F> {
  Q8BlockRows from(int64_t r) const { return {BlockRows<F>::from(r)}; }
};
template <typename Rows>
struct IsQ8BlockRows : std::false_type {};
template <WeightFormat F>
struct IsQ8BlockRows<Q8BlockRows<F>> : std::true_type {};

// y[t, r] (+)= row r (of w's first R) . token t for NT tokens, the R rows read side by side (R
// streams from memory at once). With Prefetch, the rows `ahead` rows on are requested line by
// line as these are read.
template <int R, int NT, bool Accumulate, bool Prefetch, WeightFormat F>
inline void q8_tile(float* y, int64_t y_stride, const Q8Token* x, const BlockRows<F>& w, int64_t blocks,
                    int64_t ahead) {
  using B = Block<F>;
  Q8Acc acc[R * NT];
  for (auto& a : acc) a = q8_zero();
  for (int64_t b = 0; b < blocks; ++b) {
    if constexpr (Prefetch)  // every 64-byte line that starts inside block b
      for (int64_t line = (b * B::kBytes + 63) / 64; line * 64 < (b + 1) * B::kBytes; ++line)
        for (int r = 0; r < R; ++r) __builtin_prefetch(w.w + (ahead + r) * w.stride + line * 64, 0, 3);
    for (int r = 0; r < R; ++r) Q8Dot<F>::template block<NT>(w.block(r, b), x, b, acc + r * NT);
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < NT; ++t) {
      float& out = y[t * y_stride + r];
      out = Accumulate ? out + q8_sum(acc[r * NT + t]) : q8_sum(acc[r * NT + t]);
    }
}

// Blocks of activations the lane kernels' views hold past their last (whole vectors of eight).
constexpr int64_t kLaneSlack = 8;

// The lane kernels' view of `tokens` quantised tokens (their offset and min terms added), in
// this thread's own buffers.
template <WeightFormat F>
inline const LaneToken* lane_tokens(const Q8Token* toks, int64_t tokens, int64_t blocks) {
  thread_local std::vector<int32_t> offset;
  thread_local std::vector<float> dsum;
  thread_local std::vector<LaneToken> lanes;
  const int64_t size = tokens * blocks + kLaneSlack;  // whole vectors of eight past the last block
  if (static_cast<int64_t>(offset.size()) < size) offset.resize(size);  // grows, then stays
  if (static_cast<int64_t>(dsum.size()) < size) dsum.resize(size);
  if (static_cast<int64_t>(lanes.size()) < tokens) lanes.resize(tokens);
  for (int64_t t = 0; t < tokens; ++t) {
    lane_terms<F>(offset.data() + t * blocks, dsum.data() + t * blocks, toks[t].s, toks[t].d, blocks);
    lanes[t] = {toks[t].q, toks[t].d, offset.data() + t * blocks, dsum.data() + t * blocks};
  }
  return lanes.data();
}

// Tokens per tile: every weight block decoded serves this many tokens.
constexpr int kQ8TileTokens = 4;
// How far ahead of the rows being read the integer products request rows: three times the float
// products' kPrefetchAheadBytes (measured on the 1B-shaped Q4_K_M file: 4 KiB 21.5 tokens/s,
// 12 KiB 23.8, 32 KiB 23.0; no prefetch 15.0).
constexpr int64_t kQ8PrefetchAheadBytes = 3 * kPrefetchAheadBytes;

// y[t, r] (+)= w[r, :in] . x[t, :in] for rows [row_begin, row_end) and the quantised tokens,
// each row times the tokens in tiles of kQ8TileTokens (q8_rows' general kernel); with
// four_rows, a single token's rows four side by side.
template <bool Accumulate, WeightFormat F>
inline void q8_tiles(float* y, int64_t y_stride, const Q8Token* toks, const BlockRows<F>& w, int64_t tokens,
                     int64_t in, int64_t row_begin, int64_t row_end, bool four_rows) {
  const int64_t blocks = in / Block<F>::kValues;
  // R rows side by side, every row's tokens in tiles of up to kQ8TileTokens; the first tile of a
  // block of rows prefetches the rows ahead.
  const auto row_block = [&](auto rows_c, int64_t r) {
    constexpr int R = decltype(rows_c)::value;
    const int64_t block_bytes = R * BlockRows<F>::row_bytes(in);
    const int64_t ahead = R * ((kQ8PrefetchAheadBytes + block_bytes - 1) / block_bytes);
    const BlockRows<F> rows = w.from(r);
    for (int64_t t0 = 0; t0 < tokens; t0 += kQ8TileTokens) {
      float* yt = y + t0 * y_stride + r;
      const Q8Token* xt = toks + t0;
      auto tile = [&](auto nt) {
        constexpr int NT = decltype(nt)::value;
        t0 == 0 ? q8_tile<R, NT, Accumulate, true>(yt, y_stride, xt, rows, blocks, ahead)
                : q8_tile<R, NT, Accumulate, false>(yt, y_stride, xt, rows, blocks, ahead);
      };
      switch (std::min<int64_t>(kQ8TileTokens, tokens - t0)) {
        case 4: tile(std::integral_constant<int, 4>{}); break;
        case 3: tile(std::integral_constant<int, 3>{}); break;
        case 2: tile(std::integral_constant<int, 2>{}); break;
        default: tile(std::integral_constant<int, 1>{}); break;
      }
    }
  };
  int64_t r = row_begin;
  if (tokens == 1 && four_rows)  // the accumulators of four rows fit the registers
    for (; r + 4 <= row_end; r += 4) row_block(std::integral_constant<int, 4>{}, r);
  for (; r < row_end; ++r) row_block(std::integral_constant<int, 1>{}, r);
}

#if defined(PYRUNTIME_Q8_SIMD)
// Lane i < n: the integer product of block i of `blocks` (F's blocks one after another) with
// the 32 activations at xq + 32 i, the weights' values as stored (Q8_0's signed bytes, the
// unsigned nibbles of Q4_0, whose -8 is LaneToken::offset's, and Q4_1); lanes past n: 0.
template <WeightFormat F>
inline __m256i block_sums8(const uint8_t* blocks, const int8_t* xq, int n) {
  constexpr int64_t kBytes = Block<F>::kBytes;
  __m256i p[8];
  if constexpr (F == WeightFormat::Q8_0) {  // eight int32 per block (|w| <= 128: exact int16 pairs)
    for (int i = 0; i < 8; ++i) {
      p[i] = _mm256_setzero_si256();
      if (i >= n) continue;  // nothing read past the last block
      const __m256i w = load256(blocks + i * kBytes + 2);
      p[i] = dot_u8s8(_mm256_abs_epi8(w), _mm256_sign_epi8(load256(xq + 32 * i), w));
    }
    const __m256i a = _mm256_hadd_epi32(p[0], p[1]), b = _mm256_hadd_epi32(p[2], p[3]);
    const __m256i c = _mm256_hadd_epi32(p[4], p[5]), d = _mm256_hadd_epi32(p[6], p[7]);
    const __m256i e = _mm256_hadd_epi32(a, b), f = _mm256_hadd_epi32(c, d);  // per 128-bit half: blocks 0-3, 4-7
    return _mm256_add_epi32(_mm256_permute2x128_si256(e, f, 0x20), _mm256_permute2x128_si256(e, f, 0x31));
  } else {  // sixteen int16 per block (pairs of nibble products: at most 2 * 15 * 127)
    constexpr int kQs = F == WeightFormat::Q4_1 ? 4 : 2;
    const __m256i shift = _mm256_setr_epi64x(0, 0, 4, 4), low4 = _mm256_set1_epi8(15);
    for (int i = 0; i < 8; ++i) {
      p[i] = _mm256_setzero_si256();
      if (i >= n) continue;
      // Values 0-15 (the low nibbles) in the low half, 16-31 in the high half.
      const __m256i q = _mm256_broadcastsi128_si256(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(blocks + i * kBytes + kQs)));
      p[i] = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srlv_epi64(q, shift), low4), load256(xq + 32 * i));
    }
    // Three rounds of int16 pair sums (each then of 4, 8, 16 products: at most 30480, exact)
    // leave block i's halves at int16 i of each 128-bit half.
    const __m256i a = _mm256_hadd_epi16(p[0], p[1]), b = _mm256_hadd_epi16(p[2], p[3]);
    const __m256i c = _mm256_hadd_epi16(p[4], p[5]), d = _mm256_hadd_epi16(p[6], p[7]);
    const __m256i g = _mm256_hadd_epi16(_mm256_hadd_epi16(a, b), _mm256_hadd_epi16(c, d));
    return _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(g)),
                            _mm256_cvtepi16_epi32(_mm256_extracti128_si256(g, 1)));
  }
}

// r[i] lane j <- r[j] lane i: an 8 x 8 float transpose.
inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i)
    for (int h = 0; h < 2; ++h) {
      u[4 * i + 2 * h] = _mm256_shuffle_ps(t[4 * i + h], t[4 * i + 2 + h], 0x44);
      u[4 * i + 2 * h + 1] = _mm256_shuffle_ps(t[4 * i + h], t[4 * i + 2 + h], 0xEE);
    }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x20);
    r[4 + i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x31);
  }
}

// y[r] (+)= w[r, :in] . x for rows [row_begin, row_end) and one token, the lane kernels' sums
// (linear_q8_lanes.h) read row after row: a single stream from memory (q8_decode_rows() == 1).
// Eight blocks at a time, each block's integer sum, its product with the activation scale and
// the weight's scales are formed as the lane kernels form them and kept for kRows rows; then the
// rows go one per lane (a transpose) and their sums run over the blocks in order with the lane
// kernels' multiply-adds: the same bits as lane_rows.
template <WeightFormat F>
constexpr bool kHasLaneOrderRows = F == WeightFormat::Q4_0 || F == WeightFormat::Q4_1 || F == WeightFormat::Q8_0;

template <WeightFormat F>
inline void lane_order_rows(float* y, bool accumulate, const LaneToken& x, const BlockRows<F>& w, int64_t in,
                            int64_t row_begin, int64_t row_end) {
  using B = Block<F>;
  static_assert(kHasLaneOrderRows<F> && B::kValues == 32 && B::kBytes >= 4, "32-value blocks");
  constexpr int kRows = 8;                                 // rows whose sums share a vector
  constexpr int kTerms = F == WeightFormat::Q4_1 ? 3 : 2;  // per block: dx float(s), d (, m)
  const int64_t blocks = in / 32, padded = (blocks + 7) / 8 * 8;
  thread_local std::vector<float> terms;  // [term][row][block]
  if (static_cast<int64_t>(terms.size()) < kTerms * kRows * padded) terms.resize(kTerms * kRows * padded);
  const int64_t ahead = (kQ8PrefetchAheadBytes + w.stride - 1) / w.stride;  // rows
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i head_at = _mm256_mullo_epi32(lane, _mm256_set1_epi32(B::kBytes));
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kRows) {
    const int n = static_cast<int>(std::min<int64_t>(kRows, row_end - r0));
    for (int r = 0; r < n; ++r) {
      const uint8_t* row = w.w + (r0 + r) * w.stride;
      const uint8_t* next = w.w + std::min(r0 + r + ahead, row_end - 1) * w.stride;
      float* const t = terms.data() + r * padded;
      for (int64_t b0 = 0; b0 < blocks; b0 += 8) {
        const int nb = static_cast<int>(std::min<int64_t>(8, blocks - b0));
        for (int64_t line = (b0 * B::kBytes + 63) / 64; line * 64 < (b0 + nb) * B::kBytes; ++line)
          __builtin_prefetch(next + line * 64, 0, 3);
        __m256i sums = block_sums8<F>(row + b0 * B::kBytes, x.q + 32 * b0, nb);
        if constexpr (F != WeightFormat::Q8_0)  // Q8_0's offset is for w + 128; these sums are of w
          sums = _mm256_add_epi32(sums, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.offset + b0)));
        _mm256_storeu_ps(t + b0, _mm256_mul_ps(_mm256_cvtepi32_ps(sums), _mm256_loadu_ps(x.d + b0)));
        // Each block's first four bytes: its float16 scale (and Q4_1's min).
        const __m256i heads = _mm256_mask_i32gather_epi32(_mm256_setzero_si256(),
                                                          reinterpret_cast<const int*>(row + b0 * B::kBytes), head_at,
                                                          _mm256_cmpgt_epi32(_mm256_set1_epi32(nb), lane), 1);
        _mm256_storeu_ps(t + kRows * padded + b0, lanes8::f16_low(heads));
        if constexpr (F == WeightFormat::Q4_1) _mm256_storeu_ps(t + 2 * kRows * padded + b0, lanes8::f16_high(heads));
      }
    }
    __m256 acc = _mm256_setzero_ps();  // lanes past n: whatever the buffer holds, never stored
    for (int64_t b0 = 0; b0 < blocks; b0 += 8) {
      __m256 v[kTerms][kRows];
      for (int k = 0; k < kTerms; ++k) {
        for (int r = 0; r < kRows; ++r) v[k][r] = _mm256_loadu_ps(terms.data() + (k * kRows + r) * padded + b0);
        transpose8(v[k]);  // v[k][i]: block b0 + i of every row
      }
      const int nb = static_cast<int>(std::min<int64_t>(8, blocks - b0));
      for (int i = 0; i < nb; ++i) {
        acc = _mm256_fmadd_ps(v[1][i], v[0][i], acc);
        if constexpr (F == WeightFormat::Q4_1)
          acc = _mm256_fmadd_ps(v[kTerms - 1][i], _mm256_set1_ps(x.dsum[b0 + i]), acc);
      }
    }
    lanes8::store(y + r0, acc, n, accumulate);
  }
}
#endif

// y[t, r] (+)= w[r, :in] . x[t, :in] for rows [row_begin, row_end) and every token (a decode
// call's few): x quantised (by every thread for itself: a few thousand values, no barrier), then
// the lane kernels where the format and CPU have one (every token against each group of rows),
// else each row times the tokens in tiles of kQ8TileTokens. Each token's sum runs in the same
// order whatever the batch.
template <bool Accumulate, WeightFormat F>
inline void q8_rows(float* y, int64_t y_stride, const float* x, int64_t x_stride, const BlockRows<F>& w,
                    int64_t tokens, int64_t in, int64_t row_begin, int64_t row_end) {
  // The lane kernels' tiles take up to kMaxRowTileTokens tokens: a longer call (a prompt call of
  // many short chunks, with 8-bit prompt activations) in pieces of that many, each token's sums
  // as they are alone.
  if (tokens > kMaxRowTileTokens) {
    for (int64_t t0 = 0; t0 < tokens; t0 += kMaxRowTileTokens)
      q8_rows<Accumulate, F>(y + t0 * y_stride, y_stride, x + t0 * x_stride, x_stride, w,
                             std::min<int64_t>(kMaxRowTileTokens, tokens - t0), in, row_begin, row_end);
    return;
  }
  constexpr int G = Q8Dot<F>::kGroup;
  thread_local std::vector<int8_t> xq;
  thread_local std::vector<float> xd;
  thread_local std::vector<int16_t> xs;
  thread_local std::vector<Q8Token> toks;
  if (static_cast<int64_t>(xq.size()) < tokens * in) xq.resize(tokens * in);  // grows, then stays
  if (static_cast<int64_t>(xd.size()) < tokens * (in / G) + kLaneSlack) xd.resize(tokens * (in / G) + kLaneSlack);
  if (static_cast<int64_t>(xs.size()) < tokens * (in / 16)) xs.resize(tokens * (in / 16));
  if (static_cast<int64_t>(toks.size()) < tokens) toks.resize(tokens);
  for (int64_t t = 0; t < tokens; ++t) {
    toks[t] = {xq.data() + t * in, xd.data() + t * (in / G), xs.data() + t * (in / 16)};
    quantize_q8(xq.data() + t * in, xd.data() + t * (in / G), xs.data() + t * (in / 16), x + t * x_stride, in, G);
  }
  // One token: its rows read one after another, or side by side (q8_decode_rows()).
  const bool row_after_row = tokens == 1 && q8_decode_rows() == 1;
#if defined(PYRUNTIME_Q8_SIMD)
  if constexpr (kHasLaneOrderRows<F>) {
#if defined(PYRUNTIME_VEC_AVX512)
    const bool vnni_lanes = vnni::kHasLaneDot<F> && vnni::available();
#else
    constexpr bool vnni_lanes = false;
#endif
    if (vnni_lanes || lanes8::kHasLaneDot<F>) {  // a row per lane (linear_q8_lanes.h), or their sums row after row
      const LaneToken* lt = lane_tokens<F>(toks.data(), tokens, in / G);
      if (row_after_row) return lane_order_rows<F>(y, Accumulate, *lt, w, in, row_begin, row_end);
#if defined(PYRUNTIME_VEC_AVX512)
      if (vnni_lanes) return vnni::lane_rows<F>(y, y_stride, Accumulate, lt, w, tokens, in, row_begin, row_end);
#endif
      if constexpr (lanes8::kHasLaneDot<F>)
        return lanes8::lane_rows<F>(y, y_stride, Accumulate, lt, w, tokens, in, row_begin, row_end);
    }
    if constexpr (!lanes8::kHasLaneDot<F>)  // Q8_0 without VNNI
      q8_tiles<Accumulate>(y, y_stride, toks.data(), w, tokens, in, row_begin, row_end, !row_after_row);
  } else
#endif
    q8_tiles<Accumulate>(y, y_stride, toks.data(), w, tokens, in, row_begin, row_end, !row_after_row);
}

}  // namespace pyruntime::cpu::PYRUNTIME_ISA::detail
