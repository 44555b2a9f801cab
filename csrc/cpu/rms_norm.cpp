#include "pyruntime/cpu_kernels.h"
#include "pyruntime/vec.h"

namespace pyruntime::cpu {

namespace {

constexpr int W = VecF::W;

inline int lanes(int64_t hidden, int64_t i) {
  return static_cast<int>(hidden - i < W ? hidden - i : W);
}

// out = x * inv_rms * weight for one row already known to have sum of squares ss.
template <typename T>
inline void scale_row(T* out, const T* x, const T* weight, int64_t hidden, float ss, float eps) {
  VecF inv = VecF::set1(1.0f / std::sqrt(ss / static_cast<float>(hidden) + eps));
  for (int64_t i = 0; i < hidden; i += W) {
    int n = lanes(hidden, i);
    store_n(load_n(x + i, n) * inv * load_n(weight + i, n), out + i, n);
  }
}

template <typename T>
inline float sum_squares(const T* x, int64_t hidden) {
  VecF acc = VecF::zero();
  for (int64_t i = 0; i < hidden; i += W) {
    VecF v = load_n(x + i, lanes(hidden, i));
    acc = VecF::fma(v, v, acc);
  }
  return acc.reduce_sum();
}

}  // namespace

template <typename T>
void rms_norm(T* out, int64_t out_stride, const T* x, int64_t x_stride, const T* weight,
              int64_t rows, int64_t hidden, float eps) {
#pragma omp parallel for schedule(static) if (rows * hidden > 32768)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * x_stride;
    scale_row(out + r * out_stride, xr, weight, hidden, sum_squares(xr, hidden), eps);
  }
}

template <typename T>
void fused_add_rms_norm(T* x, int64_t x_stride, T* residual, int64_t residual_stride,
                        const T* weight, int64_t rows, int64_t hidden, float eps) {
#pragma omp parallel for schedule(static) if (rows * hidden > 32768)
  for (int64_t r = 0; r < rows; ++r) {
    T* xr = x + r * x_stride;
    T* rr = residual + r * residual_stride;
    VecF acc = VecF::zero();
    for (int64_t i = 0; i < hidden; i += W) {
      int n = lanes(hidden, i);
      store_n(load_n(xr + i, n) + load_n(rr + i, n), rr + i, n);
      // Re-read the stored value so the norm sees the residual rounded to T, as
      // a framework computing in T would.
      VecF s = load_n(rr + i, n);
      acc = VecF::fma(s, s, acc);
    }
    scale_row(xr, rr, weight, hidden, acc.reduce_sum(), eps);
  }
}

#define PYRUNTIME_INSTANTIATE(T)                                                              \
  template void rms_norm<T>(T*, int64_t, const T*, int64_t, const T*, int64_t, int64_t, float); \
  template void fused_add_rms_norm<T>(T*, int64_t, T*, int64_t, const T*, int64_t, int64_t, float);
PYRUNTIME_INSTANTIATE(float)
PYRUNTIME_INSTANTIATE(bf16)
#undef PYRUNTIME_INSTANTIATE

}  // namespace pyruntime::cpu
