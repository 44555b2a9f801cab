#include "pyruntime/cpu_kernels.h"
#include "pyruntime/vec.h"

namespace pyruntime::cpu {

template <typename T>
void silu_and_mul(T* out, int64_t out_stride, const T* x, int64_t x_stride, int64_t rows,
                  int64_t inter) {
  constexpr int W = VecF::W;
#pragma omp parallel for schedule(static) if (rows * inter > 16384)
  for (int64_t r = 0; r < rows; ++r) {
    const T* gate = x + r * x_stride;
    const T* up = gate + inter;
    T* o = out + r * out_stride;
    int64_t i = 0;
    for (; i + 2 * W <= inter; i += 2 * W) {
      VecF g0, g1, u0, u1;
      load2(gate + i, g0, g1);
      load2(up + i, u0, u1);
      store2(o + i, silu(g0) * u0, silu(g1) * u1);
    }
    for (; i < inter; i += W) {
      int n = static_cast<int>(inter - i < W ? inter - i : W);
      store_n(silu(load_n(gate + i, n)) * load_n(up + i, n), o + i, n);
    }
  }
}

template void silu_and_mul<float>(float*, int64_t, const float*, int64_t, int64_t, int64_t);
template void silu_and_mul<bf16>(bf16*, int64_t, const bf16*, int64_t, int64_t, int64_t);

}  // namespace pyruntime::cpu
