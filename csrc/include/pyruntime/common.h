// Framework-free basics shared by every kernel: the bfloat16 storage type,
// conversions, and the error type kernels' callers throw on bad arguments.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace pyruntime {

// Brain float: the upper 16 bits of an IEEE float32.
struct bf16 {
  uint16_t bits;
};

inline float bf16_to_float(bf16 v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Round to nearest even, NaN kept quiet (as torch and the hardware do).
inline bf16 float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>(u >> 16)};
}

// IEEE half (binary16) bits -> float32, exactly (subnormals, infinities and NaN included).
inline float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0x1fu) {
    u = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    u = sign | ((exp + 112u) << 23) | (man << 13);
  } else if (man == 0) {
    u = sign;
  } else {  // subnormal: shift the mantissa up to its leading one
    uint32_t m = man, e = 0;
    while (!(m & 0x400u)) {
      m <<= 1;
      ++e;
    }
    u = sign | ((113u - e) << 23) | ((m & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline float to_float(float v) { return v; }
inline float to_float(bf16 v) { return bf16_to_float(v); }
inline float to_float(int8_t v) { return static_cast<float>(v); }

template <typename T> inline T from_float(float v);
template <> inline float from_float<float>(float v) { return v; }
template <> inline bf16 from_float<bf16>(float v) { return float_to_bf16(v); }

enum class DType { Float32, BFloat16, Float16 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::BFloat16: return "bfloat16";
    case DType::Float16: return "float16";
  }
  return "unknown";
}

// Raised by the checking layer of the plain C++ library (the torch bindings use
// TORCH_CHECK instead); the message names the offending argument.
class InvalidArgument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

#define PYRUNTIME_CHECK(cond, msg)                                   \
  do {                                                               \
    if (!(cond)) throw ::pyruntime::InvalidArgument(std::string(msg)); \
  } while (0)

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Layout of one [tokens, heads, head_dim] operand whose last dimension is contiguous.
struct HeadsView {
  int64_t token_stride;
  int64_t head_stride;
  int64_t num_heads;
};

}  // namespace pyruntime
