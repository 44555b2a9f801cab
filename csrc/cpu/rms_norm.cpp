#include "norm_internal.h"
#include "isa.h"
#include "vec.h"
#include "side_by_side_internal.h"

namespace pyruntime::cpu::PYRUNTIME_ISA {

using detail::lanes;
using detail::scale_row;
using detail::sum_squares;

template <typename T>
void rms_norm(T* out, int64_t out_stride, const T* x, int64_t x_stride, const T* weight,
              int64_t rows, int64_t hidden, float eps) {
  const bool stream = stream_output(rows * hidden * 2 * int64_t(sizeof(T)));
  const auto row = [&](int64_t r, float ss) {
    if (stream)
      scale_row<T, true>(out + r * out_stride, x + r * x_stride, weight, hidden, ss, eps);
    else
      scale_row<T, false>(out + r * out_stride, x + r * x_stride, weight, hidden, ss, eps);
  };
#pragma omp parallel if (rows * hidden > 32768)
  {
    int64_t begin, end;
    detail::thread_share(rows, begin, end);
    detail::for_side_by_side(
        begin, end,
        [&](int64_t first, int64_t run) {
          float ss[detail::kSideBySide];
          detail::sum_squares_rows<detail::kSideBySide>(x + first * x_stride, run * x_stride, hidden, ss);
          for (int s = 0; s < detail::kSideBySide; ++s) row(first + s * run, ss[s]);
        },
        [&](int64_t r) { row(r, sum_squares(x + r * x_stride, hidden)); });
    if (stream) stream_fence();
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

}  // namespace pyruntime::cpu::PYRUNTIME_ISA
