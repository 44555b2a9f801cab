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
  int64_t i = 0;
  for (; i + 2 * W <= hidden; i += 2 * W) {
    VecF x0, x1, w0, w1;
    load2(x + i, x0, x1);
    load2(weight + i, w0, w1);
    store2(out + i, x0 * inv * w0, x1 * inv * w1);
  }
  for (; i < hidden; i += W) {
    int n = lanes(hidden, i);
    store_n(load_n(x + i, n) * inv * load_n(weight + i, n), out + i, n);
  }
}

template <typename T>
inline float sum_squares(const T* x, int64_t hidden) {
  VecF acc0 = VecF::zero(), acc1 = VecF::zero();
  int64_t i = 0;
  for (; i + 2 * W <= hidden; i += 2 * W) {
    VecF v0, v1;
    load2(x + i, v0, v1);
    acc0 = VecF::fma(v0, v0, acc0);
    acc1 = VecF::fma(v1, v1, acc1);
  }
  for (; i < hidden; i += W) {
    VecF v = load_n(x + i, lanes(hidden, i));
    acc0 = VecF::fma(v, v, acc0);
  }
  return (acc0 + acc1).reduce_sum();
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
    int64_t i = 0;
    for (; i + 2 * W <= hidden; i += 2 * W) {
      VecF x0, x1, r0, r1;
      load2(xr + i, x0, x1);
      load2(rr + i, r0, r1);
      store2(rr + i, x0 + r0, x1 + r1);
    }
    for (; i < hidden; i += W) {
      int n = lanes(hidden, i);
      store_n(load_n(xr + i, n) + load_n(rr + i, n), rr + i, n);
    }
    // The norm reads the stored residual back: it sees it rounded to T, as a framework
    // computing in T would (the row is in L1 by now).
    scale_row(xr, rr, weight, hidden, sum_squares(rr, hidden), eps);
  }
}

#define PYRUNTIME_INSTANTIATE(T)                                                              \
  template void rms_norm<T>(T*, int64_t, const T*, int64_t, const T*, int64_t, int64_t, float); \
  template void fused_add_rms_norm<T>(T*, int64_t, T*, int64_t, const T*, int64_t, int64_t, float);
PYRUNTIME_INSTANTIATE(float)
PYRUNTIME_INSTANTIATE(bf16)
#undef PYRUNTIME_INSTANTIATE

}  // namespace pyruntime::cpu
