// Integer decode products of 32-value block rows with one weight row per vector lane: kLanes
// rows side by side (16 on AVX512-VNNI, 8 with AVX2), each block's values transposed in
// registers so that lane r holds four values of row r, and each token's four 8-bit activations
// broadcast to every lane (vpdpbusd with a broadcast operand: 64 multiply-adds in one
// instruction; with AVX2, vpmaddubsw into exact int16 sums, then vpmaddwd). A transposed block
// serves every token of the call, and a token then costs eight vpdpbusd (AVX2: eight vpmaddubsw,
// their int16 adds and one vpmaddwd) and two or three float operations per block and kLanes rows: a batch of decode streams shares one decoding of
// the weights. Lane r's sum runs over the blocks in order whatever the number of tokens or the
// other rows of its group, so a row's result for a token never depends on the batch.
// VNNI: Q4_0, Q4_1, Q8_0 (read as unsigned w + 128, the offset taken off through the
// activation sums); AVX2: Q4_0, Q4_1 (Q8_0's products would overflow vpmaddubsw's int16 sums).
// The activations are linear_q8.h's (int8 groups of 32 with a float scale each and the sums of
// every 16); per token and block, the call adds the offset and min terms (LaneToken).
#pragma once

#include <cstdint>
#include <cstring>

#include "block_rows.h"
#include "linear_vnni.h"
#include "vec.h"
#include "weight_rows.h"

namespace pyruntime::cpu::PYRUNTIME_ISA::detail {

// One token's activations for the lane kernels: q[32 b + i] * d[b] ~ x; per block b the int32
// its sum starts from (the format's offset times the block's sum of q: -8 for Q4_0, -128 for
// Q8_0) and d[b] * (the sum of its q) (Q4_1's min term).
struct LaneToken {
  const int8_t* q;
  const float* d;
  const int32_t* offset;
  const float* dsum;
};

// LaneToken's offset and dsum for the format F, from the sums of each 16 quantised values (s)
// and the block scales (d).
template <WeightFormat F>
inline void lane_terms(int32_t* offset, float* dsum, const int16_t* s, const float* d, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b) {
    const int32_t sum = s[2 * b] + s[2 * b + 1];
    offset[b] = F == WeightFormat::Q4_0 ? -8 * sum : F == WeightFormat::Q8_0 ? -128 * sum : 0;
    dsum[b] = d[b] * static_cast<float>(sum);
  }
}

#if defined(PYRUNTIME_VEC_AVX512)
namespace vnni {

#define PYRUNTIME_LANES_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")))

template <WeightFormat F>
constexpr bool kHasLaneDot = F == WeightFormat::Q4_0 || F == WeightFormat::Q4_1 || F == WeightFormat::Q8_0;
constexpr int kLanes = 16;
using VecI = __m512i;
using VecW = __m512;

PYRUNTIME_LANES_TARGET inline VecW wzero() { return _mm512_setzero_ps(); }
PYRUNTIME_LANES_TARGET inline VecW wset1(float v) { return _mm512_set1_ps(v); }
PYRUNTIME_LANES_TARGET inline VecW wmul(VecW a, VecW b) { return _mm512_mul_ps(a, b); }
PYRUNTIME_LANES_TARGET inline VecW wfmadd(VecW a, VecW b, VecW c) { return _mm512_fmadd_ps(a, b, c); }
PYRUNTIME_LANES_TARGET inline VecW to_float(VecI v) { return _mm512_cvtepi32_ps(v); }
PYRUNTIME_LANES_TARGET inline VecI low_nibbles(VecI v) { return _mm512_and_si512(v, _mm512_set1_epi8(15)); }
PYRUNTIME_LANES_TARGET inline VecI high_nibbles(VecI v) {
  return _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(15));
}
PYRUNTIME_LANES_TARGET inline VecI flip_sign_bits(VecI v) {
  return _mm512_xor_si512(v, _mm512_set1_epi8(static_cast<char>(0x80)));
}
PYRUNTIME_LANES_TARGET inline VecI load_offsets(const int32_t* o) { return _mm512_load_si512(o); }

// 128-bit lane j: the 16 bytes at rows[4j + i] + off.
PYRUNTIME_LANES_TARGET inline VecI rows_of(const uint8_t* const* rows, int i, int64_t off) {
  __m512i v = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[i] + off)));
  v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[4 + i] + off)), 1);
  v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[8 + i] + off)), 2);
  return _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[12 + i] + off)), 3);
}
PYRUNTIME_LANES_TARGET inline VecI unpacklo32(VecI a, VecI b) { return _mm512_unpacklo_epi32(a, b); }
PYRUNTIME_LANES_TARGET inline VecI unpackhi32(VecI a, VecI b) { return _mm512_unpackhi_epi32(a, b); }
PYRUNTIME_LANES_TARGET inline VecI unpacklo64(VecI a, VecI b) { return _mm512_unpacklo_epi64(a, b); }
PYRUNTIME_LANES_TARGET inline VecI unpackhi64(VecI a, VecI b) { return _mm512_unpackhi_epi64(a, b); }

PYRUNTIME_LANES_TARGET inline VecI block_dot(const VecI w[8], const int8_t* xq, int32_t start) {
  __m512i s = _mm512_set1_epi32(start);
  for (int k = 0; k < 8; ++k) {
    int32_t four;
    std::memcpy(&four, xq + 4 * k, 4);
    s = _mm512_dpbusd_epi32(s, w[k], _mm512_set1_epi32(four));
  }
  return s;
}

PYRUNTIME_LANES_TARGET inline VecI heads(const uint8_t* const* rows, VecI offsets, int64_t at) {
  return _mm512_i32gather_epi32(offsets, rows[0] + at, 1);
}
PYRUNTIME_LANES_TARGET inline VecW f16_low(VecI v) { return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v)); }
PYRUNTIME_LANES_TARGET inline VecW f16_high(VecI v) {
  return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(v, 16)));
}

PYRUNTIME_LANES_TARGET inline void store(float* y, VecW v, int n, bool accumulate) {
  const __mmask16 keep = static_cast<__mmask16>((1u << n) - 1);
  if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(keep, y));
  _mm512_mask_storeu_ps(y, keep, v);
}

#include "linear_q8_lanes.inc"

#undef PYRUNTIME_LANES_TARGET

}  // namespace vnni
#endif

#if defined(PYRUNTIME_VEC_AVX512) || defined(PYRUNTIME_VEC_AVX2)
namespace lanes8 {

#define PYRUNTIME_LANES_TARGET

template <WeightFormat F>
constexpr bool kHasLaneDot = F == WeightFormat::Q4_0 || F == WeightFormat::Q4_1;
constexpr int kLanes = 8;
using VecI = __m256i;
using VecW = __m256;

inline VecW wzero() { return _mm256_setzero_ps(); }
inline VecW wset1(float v) { return _mm256_set1_ps(v); }
inline VecW wmul(VecW a, VecW b) { return _mm256_mul_ps(a, b); }
inline VecW wfmadd(VecW a, VecW b, VecW c) { return _mm256_fmadd_ps(a, b, c); }
inline VecW to_float(VecI v) { return _mm256_cvtepi32_ps(v); }
inline VecI low_nibbles(VecI v) { return _mm256_and_si256(v, _mm256_set1_epi8(15)); }
inline VecI high_nibbles(VecI v) { return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(15)); }
inline VecI flip_sign_bits(VecI v) { return _mm256_xor_si256(v, _mm256_set1_epi8(static_cast<char>(0x80))); }
inline VecI load_offsets(const int32_t* o) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(o)); }

inline VecI rows_of(const uint8_t* const* rows, int i, int64_t off) {
  return _mm256_set_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[4 + i] + off)),
                          _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[i] + off)));
}
inline VecI unpacklo32(VecI a, VecI b) { return _mm256_unpacklo_epi32(a, b); }
inline VecI unpackhi32(VecI a, VecI b) { return _mm256_unpackhi_epi32(a, b); }
inline VecI unpacklo64(VecI a, VecI b) { return _mm256_unpacklo_epi64(a, b); }
inline VecI unpackhi64(VecI a, VecI b) { return _mm256_unpackhi_epi64(a, b); }

// The eight products summed in int16 (|w| < 16, |x| <= 127: at most 8 * 2 * 15 * 127 = 30480,
// exact), then widened.
inline VecI block_dot(const VecI w[8], const int8_t* xq, int32_t start) {
  __m256i s16 = _mm256_setzero_si256();
  for (int k = 0; k < 8; ++k) {
    int32_t four;
    std::memcpy(&four, xq + 4 * k, 4);
    s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(w[k], _mm256_set1_epi32(four)));
  }
  return _mm256_add_epi32(_mm256_madd_epi16(s16, _mm256_set1_epi16(1)), _mm256_set1_epi32(start));
}

inline VecI heads(const uint8_t* const* rows, VecI offsets, int64_t at) {
  return _mm256_i32gather_epi32(reinterpret_cast<const int*>(rows[0] + at), offsets, 1);
}
// The low 16 bits of each lane, in order, as eight float16.
inline __m128i low_halves(VecI v) {
  const __m256i p = _mm256_packus_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0xffff)), _mm256_setzero_si256());
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(p, 0x08));
}
inline VecW f16_low(VecI v) { return _mm256_cvtph_ps(low_halves(v)); }
inline VecW f16_high(VecI v) { return _mm256_cvtph_ps(low_halves(_mm256_srli_epi32(v, 16))); }

inline void store(float* y, VecW v, int n, bool accumulate) {
  const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  if (accumulate) v = _mm256_add_ps(v, _mm256_maskload_ps(y, keep));
  _mm256_maskstore_ps(y, keep, v);
}

#include "linear_q8_lanes.inc"

#undef PYRUNTIME_LANES_TARGET

}  // namespace lanes8
#endif

}  // namespace pyruntime::cpu::PYRUNTIME_ISA::detail
