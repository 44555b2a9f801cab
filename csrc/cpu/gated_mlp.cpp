#include <omp.h>

#include <algorithm>

#include "linear_internal.h"
#include "isa.h"

namespace pyruntime::cpu::PYRUNTIME_ISA {

namespace {

int64_t chunk_for(int64_t inter, int64_t threads) {
  return ceil_div(ceil_div(inter, threads), W) * W;
}

// This thread's output rows [r0, r1) of `rows` (inside a parallel region): blocks a multiple of
// the vector width, so that store_rows stays in bounds.
void thread_rows(int64_t rows, int64_t& r0, int64_t& r1) {
  const int64_t per = chunk_for(rows, omp_get_num_threads());
  r0 = std::min(rows, omp_get_thread_num() * per);
  r1 = std::min(rows, r0 + per);
}

// out[t, r] = yf[t, r] for rows [r0, r1) of every token, converted to T.
template <typename T>
void store_rows(T* out, const float* yf, int64_t tokens, int64_t width, int64_t r0, int64_t r1) {
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t r = r0; r < r1; r += W) {
      const int n = static_cast<int>(std::min<int64_t>(W, r1 - r));
      store_n(load_n(yf + t * width + r, n), out + t * width + r, n);
    }
}
}  // namespace

int64_t linear_workspace_floats(int64_t tokens, int64_t in_features, int64_t out_features) {
  return tokens * (in_features + out_features);
}

template <typename T>
void linear(T* y, const T* x, const T* w, int64_t tokens, int64_t in_features,
            int64_t out_features, float* workspace) {
  float* xf = workspace;                       // [tokens, in_features]
  float* yf = workspace + tokens * in_features;  // [tokens, out_features]
  detail::convert(xf, x, tokens * in_features);
#pragma omp parallel if (out_features * in_features > 65536)
  {
    int64_t r0, r1;
    thread_rows(out_features, r0, r1);
    detail::linear_rows(yf, out_features, xf, in_features, detail::DenseRows<T>{w, in_features}, tokens,
                        in_features, r0, r1);
    store_rows(y, yf, tokens, out_features, r0, r1);
  }
}

int64_t gated_mlp_workspace_floats(int64_t tokens, int64_t hidden, int64_t inter) {
  const int64_t threads = omp_get_max_threads();
  // x in float32, then per thread the gate and up values of its slice of the intermediate
  // (2 x tokens x chunk), then the intermediate silu(gate) * up [tokens, inter] and the
  // output in float32 [tokens, hidden].
  return 2 * tokens * hidden + 2 * tokens * (inter + threads * W) + tokens * inter;
}

// Every thread computes its slice of the intermediate (its gate and up rows), then, after one
// barrier, whole rows of down over the whole intermediate (a few KiB, read from the caches): a
// thread's down rows are one contiguous block. (Down's columns split between the threads instead,
// which needs no barrier but a sum of partial outputs, read every row in pieces of a page or
// less, and so slowly.)
template <typename T>
void gated_mlp(T* out, const T* x, const T* gate_up, const T* down, int64_t tokens,
               int64_t hidden, int64_t inter, float* workspace) {
  float* xf = workspace;
  detail::convert(xf, x, tokens * hidden);
  float* gate_up_base = xf + tokens * hidden;
  float* act = gate_up_base + 2 * tokens * (inter + omp_get_max_threads() * W);  // [tokens, inter]
  float* yf = act + tokens * inter;                                               // [tokens, hidden]
#pragma omp parallel
  {
    const int64_t chunk = chunk_for(inter, omp_get_num_threads()), tid = omp_get_thread_num();
    const int64_t i0 = std::min(inter, tid * chunk), i1 = std::min(inter, i0 + chunk);
    const int64_t len = i1 - i0;
    float* gate = gate_up_base + 2 * tid * tokens * chunk;  // [tokens, chunk]
    float* up = gate + tokens * chunk;                      // [tokens, chunk]
    if (len > 0) {
      const detail::DenseRows<T> rows{gate_up, hidden};
      detail::linear_rows(gate, chunk, xf, hidden, rows.from(i0), tokens, hidden, 0, len);
      detail::linear_rows(up, chunk, xf, hidden, rows.from(inter + i0), tokens, hidden, 0, len);
      for (int64_t t = 0; t < tokens; ++t)
        for (int64_t i = 0; i < len; i += W) {
          const int n = static_cast<int>(len - i < W ? len - i : W);
          store_n(silu(load_n(gate + t * chunk + i, n)) * load_n(up + t * chunk + i, n), act + t * inter + i0 + i, n);
        }
    }
#pragma omp barrier
    int64_t r0, r1;
    thread_rows(hidden, r0, r1);
    detail::linear_rows(yf, hidden, act, inter, detail::DenseRows<T>{down, inter}, tokens, inter, r0, r1);
    store_rows(out, yf, tokens, hidden, r0, r1);
  }
}

#define PYRUNTIME_INSTANTIATE(T)                                                           \
  template void linear<T>(T*, const T*, const T*, int64_t, int64_t, int64_t, float*);      \
  template void gated_mlp<T>(T*, const T*, const T*, const T*, int64_t, int64_t, int64_t,  \
                             float*);
PYRUNTIME_INSTANTIATE(float)
PYRUNTIME_INSTANTIATE(bf16)
#undef PYRUNTIME_INSTANTIATE

}  // namespace pyruntime::cpu::PYRUNTIME_ISA
