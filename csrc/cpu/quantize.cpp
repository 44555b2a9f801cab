#include <algorithm>
#include <cmath>
#include <string>

#include "pyruntime/engine.h"

namespace pyruntime::cpu {

int64_t int8_group_size(int64_t cols) {
  for (int64_t g : {64, 32})
    if (cols > 0 && cols % g == 0) return g;
  throw InvalidArgument("int8 weights need in_features divisible by 32, got " + std::to_string(cols));
}

void quantize_int8(const float* w, int64_t rows, int64_t cols, int64_t group, int8_t* q, float* scales) {
  PYRUNTIME_CHECK(rows >= 0 && cols > 0 && group > 0 && cols % group == 0,
                  "quantize_int8: cols (" + std::to_string(cols) + ") must be a positive multiple of group (" +
                      std::to_string(group) + ")");
  const int64_t groups = cols / group;
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      const float* src = w + r * cols + g * group;
      int8_t* dst = q + r * cols + g * group;
      // std::max / std::min rather than fmax / fmin: the same results here (a NaN is skipped
      // by the maximum and clamped to -127 below), and GCC vectorises them.
      float absmax = 0.0f;
      for (int64_t i = 0; i < group; ++i) absmax = std::max(absmax, std::fabs(src[i]));
      const float scale = absmax / 127.0f;
      scales[r * groups + g] = scale;
      const float div = scale > 0.0f ? scale : 1.0f;
      for (int64_t i = 0; i < group; ++i) {
        // Round half to even (the default rounding mode), as torch.round does.
        const float v = std::nearbyint(src[i] / div);
        dst[i] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, v)));
      }
    }
}

void pack_int8_rows(const int8_t* q, const float* scales, int64_t rows, int64_t cols, int64_t group,
                    int8_t* q_out, float* scales_out) {
  constexpr int64_t B = kInt8BlockRows;
  PYRUNTIME_CHECK(rows % B == 0 && group > 0 && cols % group == 0,
                  "pack_int8_rows: rows (" + std::to_string(rows) + ") must be a multiple of " + std::to_string(B) +
                      " and cols (" + std::to_string(cols) + ") of group (" + std::to_string(group) + ")");
  const int64_t groups = cols / group;
  for (int64_t b = 0; b < rows / B; ++b)
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t r = 0; r < B; ++r) {
        const int64_t row = b * B + r;
        std::copy_n(q + row * cols + g * group, group, q_out + ((b * groups + g) * B + r) * group);
        scales_out[(b * groups + g) * B + r] = scales[row * groups + g];
      }
}

}  // namespace pyruntime::cpu
