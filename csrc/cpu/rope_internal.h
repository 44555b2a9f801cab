// Rotary embedding of one head, shared by the rope kernels and the engine.
#pragma once

#include "vec.h"

namespace pyruntime::cpu::PYRUNTIME_ISA::detail {

// Rotates the first rot_dim features of one head in place.
// \param x   [head_dim]
// \param cos [rot_dim / 2], sin [rot_dim / 2]
template <typename T>
inline void rotate_head(T* x, const float* cos, const float* sin, int64_t rot_dim, bool is_neox) {
  const int64_t half = rot_dim / 2;
  if (is_neox) {
    T* x2p = x + half;
    for (int64_t i = 0; i < half; i += VecF::W) {
      int n = static_cast<int>(half - i < VecF::W ? half - i : VecF::W);
      VecF x1 = load_n(x + i, n), x2 = load_n(x2p + i, n);
      VecF c = load_n(cos + i, n), s = load_n(sin + i, n);
      store_n(x1 * c - x2 * s, x + i, n);
      store_n(x2 * c + x1 * s, x2p + i, n);
    }
  } else {
    for (int64_t i = 0; i < half; ++i) {
      float x1 = to_float(x[2 * i]), x2 = to_float(x[2 * i + 1]);
      x[2 * i] = from_float<T>(x1 * cos[i] - x2 * sin[i]);
      x[2 * i + 1] = from_float<T>(x2 * cos[i] + x1 * sin[i]);
    }
  }
}

}  // namespace pyruntime::cpu::PYRUNTIME_ISA::detail
