// Rows of a GGUF block-format matrix (engine.h's WeightFormat::Q4_0 .. Q6_K, F16) as the products read
// them: every load decodes W values of one block straight from the file's bytes to float32 (the
// block's scale, and min where it has one, applied), so the products see the values that
// gguf.quants.dequantize gives (to the rounding of one multiply-add: a fused one here, numpy's
// two) and multiply them in float32 with float32 activations.
// Block layouts: ggml-common.h (block_q4_0 ...); the decoding follows ggml's dequantize_row_*.
#pragma once

#include <cstdint>

#include "pyruntime/common.h"
#include "pyruntime/engine.h"
#include "vec.h"

namespace pyruntime::cpu::PYRUNTIME_ISA::detail {

// Lanes l < W: float((p[l] >> shift) & mask).
inline VecF u8_field(const uint8_t* p, int shift, int mask) {
#if defined(PYRUNTIME_VEC_AVX512)
  __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  v = _mm512_and_si512(_mm512_srl_epi32(v, _mm_cvtsi32_si128(shift)), _mm512_set1_epi32(mask));
  return VecF(_mm512_cvtepi32_ps(v));
#elif defined(PYRUNTIME_VEC_AVX2)
  __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  v = _mm256_and_si256(_mm256_srl_epi32(v, _mm_cvtsi32_si128(shift)), _mm256_set1_epi32(mask));
  return VecF(_mm256_cvtepi32_ps(v));
#else
  VecF r;
  for (int l = 0; l < W; ++l) r.v[l] = static_cast<float>((p[l] >> shift) & mask);
  return r;
#endif
}

// Lanes l < W: float(((lo[l] >> lshift) & lmask) | (((hi[l] >> hshift) & hmask) << hpos)): a
// value whose low bits sit in one byte array and whose high bits in another.
inline VecF u8_fields(const uint8_t* lo, int lshift, int lmask, const uint8_t* hi, int hshift, int hmask, int hpos) {
#if defined(PYRUNTIME_VEC_AVX512)
  __m512i l = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lo)));
  __m512i h = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(hi)));
  l = _mm512_and_si512(_mm512_srl_epi32(l, _mm_cvtsi32_si128(lshift)), _mm512_set1_epi32(lmask));
  h = _mm512_and_si512(_mm512_srl_epi32(h, _mm_cvtsi32_si128(hshift)), _mm512_set1_epi32(hmask));
  return VecF(_mm512_cvtepi32_ps(_mm512_or_si512(l, _mm512_sll_epi32(h, _mm_cvtsi32_si128(hpos)))));
#elif defined(PYRUNTIME_VEC_AVX2)
  __m256i l = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(lo)));
  __m256i h = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(hi)));
  l = _mm256_and_si256(_mm256_srl_epi32(l, _mm_cvtsi32_si128(lshift)), _mm256_set1_epi32(lmask));
  h = _mm256_and_si256(_mm256_srl_epi32(h, _mm_cvtsi32_si128(hshift)), _mm256_set1_epi32(hmask));
  return VecF(_mm256_cvtepi32_ps(_mm256_or_si256(l, _mm256_sll_epi32(h, _mm_cvtsi32_si128(hpos)))));
#else
  VecF r;
  for (int i = 0; i < W; ++i)
    r.v[i] = static_cast<float>(((lo[i] >> lshift) & lmask) | (((hi[i] >> hshift) & hmask) << hpos));
  return r;
#endif
}

// Lanes l < W: float(((p[l] >> shift) & 15) | (((bits >> (first + l)) & 1) << 4)): Q5_0 / Q5_1's
// nibbles with their fifth bits from one 32-bit word.
inline VecF nibble_and_bit(const uint8_t* p, int shift, uint32_t bits, int first) {
#if defined(PYRUNTIME_VEC_AVX512)
  __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  v = _mm512_and_si512(_mm512_srl_epi32(v, _mm_cvtsi32_si128(shift)), _mm512_set1_epi32(15));
  // Rotating right by first + l - 4 puts bit first + l at bit 4.
  const __m512i idx = _mm512_add_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                       _mm512_set1_epi32(first - 4));
  const __m512i h = _mm512_and_si512(_mm512_rorv_epi32(_mm512_set1_epi32(static_cast<int>(bits)), idx),
                                     _mm512_set1_epi32(16));
  return VecF(_mm512_cvtepi32_ps(_mm512_or_si512(v, h)));
#elif defined(PYRUNTIME_VEC_AVX2)
  __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  v = _mm256_and_si256(_mm256_srl_epi32(v, _mm_cvtsi32_si128(shift)), _mm256_set1_epi32(15));
  const __m256i idx = _mm256_add_epi32(_mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0), _mm256_set1_epi32(first));
  __m256i h = _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(bits)), idx);
  h = _mm256_slli_epi32(_mm256_and_si256(h, _mm256_set1_epi32(1)), 4);
  return VecF(_mm256_cvtepi32_ps(_mm256_or_si256(v, h)));
#else
  VecF r;
  for (int l = 0; l < W; ++l)
    r.v[l] = static_cast<float>(((p[l] >> shift) & 15) | (((bits >> (first + l)) & 1u) << 4));
  return r;
#endif
}

inline float f16_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#if defined(PYRUNTIME_VEC_AVX512) || defined(PYRUNTIME_VEC_AVX2)
  return _cvtsh_ss(h);  // F16C: part of both vector levels
#else
  return f16_to_float(h);
#endif
}

inline uint32_t u32_at(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Q4_K / Q5_K: the 6-bit scale and min of sub-block j (0..7) from the block's 12 scale bytes.
inline void k4_scale_min(const uint8_t* q, int j, int& sc, int& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Block<F>::View(blk) reads a block's scales once; at(j) decodes its values [j, j + W) as float32
// (j a multiple of W; W divides 16, so a load never straddles two sub-blocks of 16 or two
// nibble halves).
template <WeightFormat F>
struct Block;

// In every decoder below the integer value is composed first and converted once; the scale
// (and min or offset) then apply in one multiply-add.
template <>
struct Block<WeightFormat::Q4_0> {  // d f16, qs[16]: value i < 16 low nibble of qs[i], else high of qs[i - 16]
  static constexpr int kValues = 32, kBytes = 18;
  struct View {
    View() = default;
    const uint8_t* b;
    VecF d, off;  // d, -8 d
    explicit View(const uint8_t* blk) : b(blk) {
      const float s = f16_at(blk);
      d = VecF::set1(s);
      off = VecF::set1(-8.0f * s);
    }
    VecF at(int j) const { return VecF::fma(u8_field(b + 2 + j % 16, j < 16 ? 0 : 4, 15), d, off); }
  };
};

template <>
struct Block<WeightFormat::Q4_1> {  // d, m f16, qs[16]: d * q + m
  static constexpr int kValues = 32, kBytes = 20;
  struct View {
    View() = default;
    const uint8_t* b;
    VecF d, m;
    explicit View(const uint8_t* blk) : b(blk), d(VecF::set1(f16_at(blk))), m(VecF::set1(f16_at(blk + 2))) {}
    VecF at(int j) const { return VecF::fma(u8_field(b + 4 + j % 16, j < 16 ? 0 : 4, 15), d, m); }
  };
};

template <>
struct Block<WeightFormat::Q5_0> {  // d f16, qh u32 (bit i: value i's fifth bit), qs[16]: d * (q - 16)
  static constexpr int kValues = 32, kBytes = 22;
  struct View {
    View() = default;
    const uint8_t* b;
    VecF d, off;
    uint32_t qh;
    explicit View(const uint8_t* blk) : b(blk), qh(u32_at(blk + 2)) {
      const float s = f16_at(blk);
      d = VecF::set1(s);
      off = VecF::set1(-16.0f * s);
    }
    VecF at(int j) const { return VecF::fma(nibble_and_bit(b + 6 + j % 16, j < 16 ? 0 : 4, qh, j), d, off); }
  };
};

template <>
struct Block<WeightFormat::Q5_1> {  // d, m f16, qh u32, qs[16]: d * q + m
  static constexpr int kValues = 32, kBytes = 24;
  struct View {
    View() = default;
    const uint8_t* b;
    VecF d, m;
    uint32_t qh;
    explicit View(const uint8_t* blk)
        : b(blk), d(VecF::set1(f16_at(blk))), m(VecF::set1(f16_at(blk + 2))), qh(u32_at(blk + 4)) {}
    VecF at(int j) const { return VecF::fma(nibble_and_bit(b + 8 + j % 16, j < 16 ? 0 : 4, qh, j), d, m); }
  };
};

template <>
struct Block<WeightFormat::Q8_0> {  // d f16, qs[32] int8
  static constexpr int kValues = 32, kBytes = 34;
  struct View {
    View() = default;
    const uint8_t* b;
    VecF d;
    explicit View(const uint8_t* blk) : b(blk), d(VecF::set1(f16_at(blk))) {}
    VecF at(int j) const { return VecF::load(reinterpret_cast<const int8_t*>(b + 2 + j)) * d; }
  };
};

// The k-quants: 256 values, sub-blocks of 16 or 32 with their own 4- to 8-bit scale (and min);
// a View converts the block's float16 factors once, at(j) the one sub-block scale it needs (a
// View is built per load by gemm_pack, so it must stay cheap).
template <>
struct Block<WeightFormat::Q2_K> {  // scales[16] (4-bit scale | 4-bit min << 4), qs[64], d, dmin f16
  static constexpr int kValues = 256, kBytes = 84;
  struct View {
    View() = default;
    const uint8_t* b;
    float d, dmin;
    explicit View(const uint8_t* blk) : b(blk), d(f16_at(blk + 80)), dmin(f16_at(blk + 82)) {}
    VecF at(int j) const {
      const int half = j / 128, quarter = (j % 128) / 32, l = j % 32, sc = b[j / 16];
      return VecF::fma(u8_field(b + 16 + half * 32 + l, 2 * quarter, 3), VecF::set1(d * static_cast<float>(sc & 0xF)),
                       VecF::set1(-(dmin * static_cast<float>(sc >> 4))));
    }
  };
};

template <>
struct Block<WeightFormat::Q3_K> {  // hmask[32], qs[64], scales[12] (16 6-bit, offset 32), d f16
  static constexpr int kValues = 256, kBytes = 110;
  struct View {
    View() = default;
    const uint8_t* b;
    float d;
    explicit View(const uint8_t* blk) : b(blk), d(f16_at(blk + 108)) {}
    // value = (low two bits | high-mask bit << 2) - 4
    VecF at(int j) const {
      const int half = j / 128, quarter = (j % 128) / 32, l = j % 32, s = j / 16;
      const uint8_t* sc = b + 96;
      const int low = s < 8 ? sc[s] & 0xF : sc[s - 8] >> 4, high = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
      const float scale = d * static_cast<float>((low | (high << 4)) - 32);
      return VecF::fma(u8_fields(b + 32 + half * 32 + l, 2 * quarter, 3, b + l, j / 32, 1, 2), VecF::set1(scale),
                       VecF::set1(-4.0f * scale));
    }
  };
};

// Q4_K and Q5_K: d, dmin f16, then 8 6-bit scales and mins of sub-blocks of 32 in 12 bytes.
struct K4Scales {
  const uint8_t* b;
  float d, dmin;
  K4Scales() = default;
  explicit K4Scales(const uint8_t* blk) : b(blk), d(f16_at(blk)), dmin(f16_at(blk + 2)) {}
  // value = q * scale + min for the sub-block of value j
  VecF apply(VecF q, int j) const {
    int sc, m;
    k4_scale_min(b + 4, j / 32, sc, m);
    return VecF::fma(q, VecF::set1(d * static_cast<float>(sc)), VecF::set1(-(dmin * static_cast<float>(m))));
  }
};

template <>
struct Block<WeightFormat::Q4_K> {  // d, dmin f16, scales[12], qs[128]
  static constexpr int kValues = 256, kBytes = 144;
  struct View : K4Scales {
    View() = default;
    explicit View(const uint8_t* blk) : K4Scales(blk) {}
    VecF at(int j) const { return apply(u8_field(b + 16 + (j / 64) * 32 + j % 32, 4 * ((j / 32) % 2), 15), j); }
  };
};

template <>
struct Block<WeightFormat::Q5_K> {  // d, dmin f16, scales[12], qh[32] (bit j / 32 of byte j % 32), qs[128]
  static constexpr int kValues = 256, kBytes = 176;
  struct View : K4Scales {
    View() = default;
    explicit View(const uint8_t* blk) : K4Scales(blk) {}
    VecF at(int j) const {
      return apply(u8_fields(b + 48 + (j / 64) * 32 + j % 32, 4 * ((j / 32) % 2), 15, b + 16 + j % 32, j / 32, 1, 4), j);
    }
  };
};

template <>
struct Block<WeightFormat::Q6_K> {  // ql[128], qh[64], scales[16] int8, d f16: d * sc * (q - 32)
  static constexpr int kValues = 256, kBytes = 210;
  struct View {
    View() = default;
    const uint8_t* b;
    float d;
    explicit View(const uint8_t* blk) : b(blk), d(f16_at(blk + 208)) {}
    VecF at(int j) const {
      const int half = j / 128, u = j % 128;
      const float scale = d * static_cast<float>(static_cast<int8_t>(b[192 + j / 16]));
      const VecF q = u8_fields(b + half * 64 + u % 64, 4 * (u / 64), 15, b + 128 + half * 32 + u % 32, 2 * (u / 32), 3, 4);
      return VecF::fma(q, VecF::set1(scale), VecF::set1(-32.0f * scale));
    }
  };
};

template <>
struct Block<WeightFormat::F16> {  // 32 float16 values (GGUF's F16 rows, cut into blocks of 32)
  static constexpr int kValues = 32, kBytes = 64;
  struct View {
    View() = default;
    const uint8_t* b;
    explicit View(const uint8_t* blk) : b(blk) {}
    VecF at(int j) const {
#if defined(PYRUNTIME_VEC_AVX512)
      return VecF(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2 * j))));
#elif defined(PYRUNTIME_VEC_AVX2)
      return VecF(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2 * j))));
#else
      VecF r;
      for (int l = 0; l < W; ++l) r.v[l] = f16_at(b + 2 * (j + l));
      return r;
#endif
    }
  };
};

// Rows [*, in] of a block-format matrix, row stride `stride` bytes (in / kValues blocks).
template <WeightFormat F>
struct BlockRows {
  using B = Block<F>;
  static constexpr WeightFormat kFormat = F;
  const uint8_t* w;
  int64_t stride;
  BlockRows from(int64_t r) const { return {w + r * stride, stride}; }
  // The block's row r and block b.
  const uint8_t* block(int64_t r, int64_t b) const { return w + r * stride + b * B::kBytes; }
  VecF load(int64_t r, int64_t i, int) const {
    return typename B::View(block(r, i / B::kValues)).at(static_cast<int>(i % B::kValues));
  }
  // Requests row r + ahead's bytes of columns [i, i + W) when they start a new 64-byte line.
  void prefetch_ahead(int64_t r, int64_t i, int64_t ahead) const {
    const int64_t at = i * B::kBytes / B::kValues;
    if (i == 0 || at / 64 != (i - W) * B::kBytes / B::kValues / 64)
      __builtin_prefetch(w + (r + ahead) * stride + at, 0, 3);
  }
  static int64_t row_bytes(int64_t in) { return in / B::kValues * B::kBytes; }
};

template <typename Rows>
struct IsBlockRows : std::false_type {};
template <WeightFormat F>
struct IsBlockRows<BlockRows<F>> : std::true_type {};

}  // namespace pyruntime::cpu::PYRUNTIME_ISA::detail
