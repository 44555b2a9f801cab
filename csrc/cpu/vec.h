// Small float32 vector type with one API over AVX-512, AVX2 and plain C++. Kernels are
// written against VecF; each level's build (csrc/cpu/kernels_<isa>.cpp) says which one it is
// by defining PYRUNTIME_VEC_AVX512 (and PYRUNTIME_VEC_BF16 for the AVX512-BF16 conversions)
// or PYRUNTIME_VEC_AVX2 before its `#pragma GCC target`, so one source serves all, each in
// its level's namespace. Loads and stores exist for float and bf16 storage; arithmetic is
// float32.
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "isa.h"

namespace pyruntime::cpu::PYRUNTIME_ISA {

#if defined(PYRUNTIME_VEC_AVX512)

struct VecF {
  static constexpr int W = 16;
  __m512 v;
  VecF() = default;
  explicit VecF(__m512 x) : v(x) {}
  static VecF zero() { return VecF(_mm512_setzero_ps()); }
  static VecF set1(float x) { return VecF(_mm512_set1_ps(x)); }
  static VecF load(const float* p) { return VecF(_mm512_loadu_ps(p)); }
  // bf16 -> float32: one word permute (the shuffle port) puts each bf16 in the high half of its
  // lane, zeros below; a widen and a shift would take a slot of the FMA port too.
  static __m512i widen_bf16(__m256i h) {
    alignas(64) static constexpr int16_t kIdx[32] = {0, 0, 1, 1, 2,  2,  3,  3,  4,  4,  5,  5,  6,  6,  7,  7,
                                                     8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15};
    return _mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, _mm512_load_si512(kIdx), _mm512_castsi256_si512(h));
  }
  static VecF load(const bf16* p) {
    return VecF(_mm512_castsi512_ps(widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))));
  }
  // W signed bytes widened to float (int8 weights; always whole vectors).
  static VecF load(const int8_t* p) {
    return VecF(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))));
  }
  // First n (< W) lanes from p, the rest zero; never touches memory past p[n-1].
  static VecF load_partial(const float* p, int n) {
    return VecF(_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p));
  }
  static VecF load_partial(const bf16* p, int n) {
    return VecF(_mm512_castsi512_ps(widen_bf16(_mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1), p))));
  }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  void store(bf16* p) const { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), to_bf16()); }
  void store_partial(float* p, int n) const {
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), v);
  }
  void store_partial(bf16* p, int n) const {
    _mm256_mask_storeu_epi16(p, static_cast<__mmask16>((1u << n) - 1), to_bf16());
  }
  // bf16 bits of every lane (round to nearest even; NaN stays NaN) in its low 16 bits.
  __m512i bf16_bits() const {
    __m512i u = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x400000)));
    return _mm512_srli_epi32(r, 16);
  }
#if defined(PYRUNTIME_VEC_BF16)
  // One instruction (round to nearest even as bf16_bits, but subnormals flushed to zero).
  __m256i to_bf16() const { return (__m256i)_mm512_cvtneps_pbh(v); }
#else
  __m256i to_bf16() const { return _mm512_cvtepi32_epi16(bf16_bits()); }
#endif
  static VecF fma(VecF a, VecF b, VecF c) { return VecF(_mm512_fmadd_ps(a.v, b.v, c.v)); }
  static VecF max(VecF a, VecF b) { return VecF(_mm512_max_ps(a.v, b.v)); }
  float reduce_sum() const { return _mm512_reduce_add_ps(v); }
  float reduce_max() const { return _mm512_reduce_max_ps(v); }
  // 1/x to ~1 ulp: the 14-bit estimate refined by one Newton step (a division is far slower).
  // exp(x) with ~1 ulp-level relative error over the float range; -inf gives 0.
  VecF exp() const {
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
    __m512 x = _mm512_max_ps(v, _mm512_set1_ps(-104.0f));
    x = _mm512_min_ps(x, _mm512_set1_ps(88.7f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
    p = _mm512_add_ps(p, _mm512_set1_ps(1.0f));
    return VecF(_mm512_scalef_ps(p, n));
  }
};
// Free functions, not friends: GCC 12 leaves friends defined in a class out of the
// `#pragma GCC target` of their level.
inline VecF operator+(VecF a, VecF b) { return VecF(_mm512_add_ps(a.v, b.v)); }
inline VecF operator-(VecF a, VecF b) { return VecF(_mm512_sub_ps(a.v, b.v)); }
inline VecF operator*(VecF a, VecF b) { return VecF(_mm512_mul_ps(a.v, b.v)); }
inline VecF operator/(VecF a, VecF b) { return VecF(_mm512_div_ps(a.v, b.v)); }
inline VecF reciprocal(VecF x) {
  __m512 r = _mm512_rcp14_ps(x.v);
  return VecF(_mm512_mul_ps(r, _mm512_fnmadd_ps(x.v, r, _mm512_set1_ps(2.0f))));
}

#elif defined(PYRUNTIME_VEC_AVX2)

struct VecF {
  static constexpr int W = 8;
  __m256 v;
  VecF() = default;
  explicit VecF(__m256 x) : v(x) {}
  static VecF zero() { return VecF(_mm256_setzero_ps()); }
  static VecF set1(float x) { return VecF(_mm256_set1_ps(x)); }
  static VecF load(const float* p) { return VecF(_mm256_loadu_ps(p)); }
  static VecF load(const bf16* p) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return VecF(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
  }
  static VecF load(const int8_t* p) {
    return VecF(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)))));
  }
  template <typename T> static VecF load_partial(const T* p, int n) {
    T tmp[W];
    std::memset(tmp, 0, sizeof(tmp));
    std::memcpy(tmp, p, sizeof(T) * n);
    return load(tmp);
  }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  void store(bf16* p) const {
    float tmp[W];
    store(tmp);
    for (int i = 0; i < W; ++i) p[i] = float_to_bf16(tmp[i]);
  }
  template <typename T> void store_partial(T* p, int n) const {
    T tmp[W];
    store(tmp);
    std::memcpy(p, tmp, sizeof(T) * n);
  }
  static VecF fma(VecF a, VecF b, VecF c) { return VecF(_mm256_fmadd_ps(a.v, b.v, c.v)); }
  static VecF max(VecF a, VecF b) { return VecF(_mm256_max_ps(a.v, b.v)); }
  float reduce_sum() const {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  float reduce_max() const {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  VecF exp() const {
    const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
    __m256 x = _mm256_max_ps(v, _mm256_set1_ps(-87.3f));
    x = _mm256_min_ps(x, _mm256_set1_ps(88.3f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187045e-06f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 res = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    // Below the clamp the true value is (almost) zero: flush, so exp(-inf) == 0.
    return VecF(_mm256_and_ps(res, _mm256_cmp_ps(v, _mm256_set1_ps(-87.3f), _CMP_GE_OQ)));
  }
};
inline VecF operator+(VecF a, VecF b) { return VecF(_mm256_add_ps(a.v, b.v)); }
inline VecF operator-(VecF a, VecF b) { return VecF(_mm256_sub_ps(a.v, b.v)); }
inline VecF operator*(VecF a, VecF b) { return VecF(_mm256_mul_ps(a.v, b.v)); }
inline VecF operator/(VecF a, VecF b) { return VecF(_mm256_div_ps(a.v, b.v)); }
inline VecF reciprocal(VecF x) { return VecF(_mm256_div_ps(_mm256_set1_ps(1.0f), x.v)); }

#else

struct VecF {
  static constexpr int W = 8;
  float v[W];
  static VecF zero() { return set1(0.0f); }
  static VecF set1(float x) {
    VecF r;
    for (int i = 0; i < W; ++i) r.v[i] = x;
    return r;
  }
  template <typename T> static VecF load(const T* p) {
    VecF r;
    for (int i = 0; i < W; ++i) r.v[i] = to_float(p[i]);
    return r;
  }
  template <typename T> static VecF load_partial(const T* p, int n) {
    VecF r = zero();
    for (int i = 0; i < n; ++i) r.v[i] = to_float(p[i]);
    return r;
  }
  template <typename T> void store(T* p) const {
    for (int i = 0; i < W; ++i) p[i] = from_float<T>(v[i]);
  }
  template <typename T> void store_partial(T* p, int n) const {
    for (int i = 0; i < n; ++i) p[i] = from_float<T>(v[i]);
  }
  template <typename F> static VecF map2(VecF a, VecF b, F f) {
    VecF r;
    for (int i = 0; i < W; ++i) r.v[i] = f(a.v[i], b.v[i]);
    return r;
  }
  static VecF fma(VecF a, VecF b, VecF c) {
    VecF r;
    for (int i = 0; i < W; ++i) r.v[i] = std::fma(a.v[i], b.v[i], c.v[i]);
    return r;
  }
  static VecF max(VecF a, VecF b) { return VecF::map2(a, b, [](float x, float y) { return x > y ? x : y; }); }
  float reduce_sum() const {
    float s = 0.0f;
    for (int i = 0; i < W; ++i) s += v[i];
    return s;
  }
  float reduce_max() const {
    float s = v[0];
    for (int i = 1; i < W; ++i) s = v[i] > s ? v[i] : s;
    return s;
  }
  VecF exp() const {
    VecF r;
    for (int i = 0; i < W; ++i) r.v[i] = std::exp(v[i]);
    return r;
  }
};
inline VecF operator+(VecF a, VecF b) { return VecF::map2(a, b, [](float x, float y) { return x + y; }); }
inline VecF operator-(VecF a, VecF b) { return VecF::map2(a, b, [](float x, float y) { return x - y; }); }
inline VecF operator*(VecF a, VecF b) { return VecF::map2(a, b, [](float x, float y) { return x * y; }); }
inline VecF operator/(VecF a, VecF b) { return VecF::map2(a, b, [](float x, float y) { return x / y; }); }
inline VecF reciprocal(VecF x) { return VecF::map2(VecF::set1(1.0f), x, [](float a, float b) { return a / b; }); }

#endif

// Floats per vector of this level, and minus infinity (the neutral element of a max).
constexpr int W = VecF::W;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// out[j] = acc[j].reduce_sum() for j < 16: sixteen horizontal sums at once.
__attribute__((always_inline)) inline void reduce_sum16(const VecF* acc, float* out) {
#if defined(PYRUNTIME_VEC_AVX512)
  // Pairwise interleave-and-add: 16 vectors of 16 partial sums -> one vector of 16 sums.
  __m512 b[8], c[4], d[2];
  for (int k = 0; k < 8; ++k)
    b[k] = _mm512_add_ps(_mm512_unpacklo_ps(acc[2 * k].v, acc[2 * k + 1].v),
                         _mm512_unpackhi_ps(acc[2 * k].v, acc[2 * k + 1].v));
  for (int k = 0; k < 4; ++k) {
    __m512d lo = _mm512_unpacklo_pd(_mm512_castps_pd(b[2 * k]), _mm512_castps_pd(b[2 * k + 1]));
    __m512d hi = _mm512_unpackhi_pd(_mm512_castps_pd(b[2 * k]), _mm512_castps_pd(b[2 * k + 1]));
    c[k] = _mm512_add_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
  }
  for (int k = 0; k < 2; ++k)
    d[k] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * k], c[2 * k + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(c[2 * k], c[2 * k + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  _mm512_storeu_ps(out, _mm512_add_ps(_mm512_shuffle_f32x4(d[0], d[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                      _mm512_shuffle_f32x4(d[0], d[1], _MM_SHUFFLE(3, 1, 3, 1))));
#else
  for (int j = 0; j < 16; ++j) out[j] = acc[j].reduce_sum();
#endif
}

#if defined(PYRUNTIME_VEC_AVX512)
// In place: r[i] becomes column i of the 16 x 16 matrix whose rows were r[0..15] (pairs,
// then quads, then 128-bit lanes, then halves: 64 shuffles instead of 256 scalar moves).
inline void transpose16(VecF* r) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i].v, r[2 * i + 1].v);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i].v, r[2 * i + 1].v);
  }
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i].v = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1].v = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2].v = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * i + 3].v = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i].v, r[i + 4].v, 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i].v, r[i + 4].v, 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8].v, r[i + 12].v, 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8].v, r[i + 12].v, 0xdd);
  }
  for (int i = 0; i < 8; ++i) {
    r[i].v = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8].v = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
}
#endif

// 2W consecutive elements as two vectors, in an order private to load2/store2 that is the
// same for every operand: element-wise code over several operands need not restore it, and
// bf16 is widened with one unpack per vector instead of a widen and a shift.
template <typename T>
inline void load2(const T* p, VecF& a, VecF& b) {
  a = VecF::load(p);
  b = VecF::load(p + VecF::W);
}
template <typename T>
inline void store2(T* p, const VecF& a, const VecF& b) {
  a.store(p);
  b.store(p + VecF::W);
}
#if defined(PYRUNTIME_VEC_AVX512)
inline void load2(const bf16* p, VecF& a, VecF& b) {
  const __m512i x = _mm512_loadu_si512(p);
  a = VecF(_mm512_castsi512_ps(_mm512_unpacklo_epi16(_mm512_setzero_si512(), x)));
  b = VecF(_mm512_castsi512_ps(_mm512_unpackhi_epi16(_mm512_setzero_si512(), x)));
}
// a and b rounded to bf16 and packed in load2's order.
inline __m512i pack_bf16(const VecF& a, const VecF& b) {
#if defined(PYRUNTIME_VEC_BF16)
  // Converted as [a | b], then each 128-bit lane's words as unpack left them.
  alignas(64) static constexpr int16_t kIdx[32] = {0,  1,  2,  3,  16, 17, 18, 19, 4,  5,  6,  7,  20, 21, 22, 23,
                                                   8,  9,  10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31};
  return _mm512_permutexvar_epi16(_mm512_load_si512(kIdx), (__m512i)_mm512_cvtne2ps_pbh(b.v, a.v));
#else
  return _mm512_packus_epi32(a.bf16_bits(), b.bf16_bits());
#endif
}
inline void store2(bf16* p, const VecF& a, const VecF& b) { _mm512_storeu_si512(p, pack_bf16(a, b)); }
#endif

// Streaming (non-temporal) stores: 2W elements at p go to memory through the write-combining
// buffers, without the line being read first (no write-allocate) and without evicting cached
// data. p must be aligned to 64 bytes or to the 2W block (lines_aligned_from tells where that
// starts); the stores are weakly ordered, so the writer ends with stream_fence() before
// another thread may read the data. The scalar build stores normally.
template <typename T>
inline void stream2(T* p, const VecF& a, const VecF& b) {
#if defined(PYRUNTIME_VEC_AVX512)
  if constexpr (sizeof(T) == 4) {
    _mm512_stream_ps(reinterpret_cast<float*>(p), a.v);
    _mm512_stream_ps(reinterpret_cast<float*>(p) + VecF::W, b.v);
  } else {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(p), pack_bf16(a, b));
  }
#elif defined(PYRUNTIME_VEC_AVX2)
  if constexpr (sizeof(T) == 4) {
    _mm256_stream_ps(reinterpret_cast<float*>(p), a.v);
    _mm256_stream_ps(reinterpret_cast<float*>(p) + VecF::W, b.v);
  } else {
    alignas(32) bf16 tmp[2 * VecF::W];
    store2(tmp, a, b);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), _mm256_load_si256(reinterpret_cast<const __m256i*>(tmp)));
  }
#else
  store2(p, a, b);
#endif
}

inline void stream_fence() {
#if defined(PYRUNTIME_VEC_AVX512) || defined(PYRUNTIME_VEC_AVX2)
  _mm_sfence();
#endif
}

// Elements of p[0..n) before the first 64-byte boundary (n when p is not aligned to its own
// element size, so that nothing is streamed).
template <typename T>
inline int64_t lines_aligned_from(const T* p, int64_t n) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (a % sizeof(T) != 0) return n;
  const int64_t head = static_cast<int64_t>((64 - a % 64) % 64 / sizeof(T));
  return head < n ? head : n;
}

// dst[0..n) = src[0..n), the whole lines from dst's first 64-byte boundary on written with
// streaming stores (bits copied as they are). Ends with the writer's stream_fence() owed.
template <typename T>
inline void stream_copy(T* dst, const T* src, int64_t n) {
  int64_t i = lines_aligned_from(dst, n);
  std::memcpy(dst, src, sizeof(T) * i);
#if defined(PYRUNTIME_VEC_AVX512) || defined(PYRUNTIME_VEC_AVX2)
  constexpr int64_t kLine = 64 / sizeof(T);
  for (; i + kLine <= n; i += kLine) {
#if defined(PYRUNTIME_VEC_AVX512)
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + i), _mm512_loadu_si512(src + i));
#else
    const __m256i* s = reinterpret_cast<const __m256i*>(src + i);
    __m256i* d = reinterpret_cast<__m256i*>(dst + i);
    _mm256_stream_si256(d, _mm256_loadu_si256(s));
    _mm256_stream_si256(d + 1, _mm256_loadu_si256(s + 1));
#endif
  }
#endif
  std::memcpy(dst + i, src + i, sizeof(T) * (n - i));
}

// W pairs of bf16 (2W elements): even = the first of every pair, odd = the second, as float32.
// Each pair fills one 32-bit lane, so a shift and a mask widen both halves (no shuffle).
inline void load_pairs(const bf16* p, VecF& even, VecF& odd) {
#if defined(PYRUNTIME_VEC_AVX512)
  const __m512i x = _mm512_loadu_si512(p);
  even = VecF(_mm512_castsi512_ps(_mm512_slli_epi32(x, 16)));
  odd = VecF(_mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(static_cast<int>(0xffff0000u)))));
#elif defined(PYRUNTIME_VEC_AVX2)
  const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  even = VecF(_mm256_castsi256_ps(_mm256_slli_epi32(x, 16)));
  odd = VecF(_mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32(static_cast<int>(0xffff0000u)))));
#else
  bf16 e[VecF::W], o[VecF::W];
  for (int i = 0; i < VecF::W; ++i) {
    e[i] = p[2 * i];
    o[i] = p[2 * i + 1];
  }
  even = VecF::load(e);
  odd = VecF::load(o);
#endif
}

// How far ahead of the bytes being read the streaming kernels request lines from memory: one
// core keeps too few misses in flight on demand alone to reach the memory bandwidth, and the
// requests go out a few lines at a time, as the lines they stand in for are read.
// The requests ask for L1 (prefetcht0): the products and the decode attention ran slower with
// L2-only requests (prefetcht1).
inline constexpr int64_t kPrefetchAheadBytes = 4096;

// Requests the lines kPrefetchAheadBytes past the `bytes` bytes at p. Past the end of the
// data this touches whatever follows, or unmapped memory: prefetches never fault.
inline void prefetch_ahead(const void* p, int64_t bytes) {
  const uintptr_t line = reinterpret_cast<uintptr_t>(p) + kPrefetchAheadBytes;
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(reinterpret_cast<const void*>(line + b), 0, 3);
}

// Loads n <= W elements: a full vector when n == W, a masked one otherwise.
template <typename T> inline VecF load_n(const T* p, int n) {
  return n == VecF::W ? VecF::load(p) : VecF::load_partial(p, n);
}
template <typename T> inline void store_n(const VecF& v, T* p, int n) {
  if (n == VecF::W) v.store(p); else v.store_partial(p, n);
}

inline VecF silu(VecF x) {
  VecF one = VecF::set1(1.0f);
  return x * reciprocal(one + (VecF::zero() - x).exp());
}

// tanh(x) = 1 - 2 / (exp(2x) + 1) (exp saturates: +-1 at the ends), to a few 1e-7 absolute.
inline VecF tanh(VecF x) {
  const VecF one = VecF::set1(1.0f);
  return one - VecF::set1(2.0f) * reciprocal((x + x).exp() + one);
}

// GELU, tanh approximation (PyTorch's approximate="tanh"): x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
inline VecF gelu_tanh(VecF x) {
  const VecF inner = VecF::set1(0.7978845608028654f) * (x + VecF::set1(0.044715f) * x * x * x);
  return VecF::set1(0.5f) * x * (VecF::set1(1.0f) + tanh(inner));
}

// cap tanh(x / cap): soft-capping (Gemma 2's attention and final logits).
inline VecF soft_cap(VecF x, float cap) {
  return VecF::set1(cap) * tanh(x * VecF::set1(1.0f / cap));
}

}  // namespace pyruntime::cpu::PYRUNTIME_ISA
