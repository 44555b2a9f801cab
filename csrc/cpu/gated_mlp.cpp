#include <omp.h>

#include <algorithm>

#include "linear_internal.h"
#include "pyruntime/cpu_kernels.h"

namespace pyruntime::cpu {

namespace {
constexpr int W = VecF::W;

int64_t chunk_for(int64_t inter, int64_t threads) {
  return ceil_div(ceil_div(inter, threads), W) * W;
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
    const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
    // Row blocks a multiple of the vector width so the store below stays in bounds.
    const int64_t per = ceil_div(ceil_div(out_features, nt), W) * W;
    const int64_t r0 = std::min(out_features, tid * per), r1 = std::min(out_features, r0 + per);
    detail::linear_rows(yf, out_features, xf, in_features, detail::DenseRows<T>{w, in_features}, tokens,
                        in_features, r0, r1);
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t r = r0; r < r1; r += W) {
        const int n = static_cast<int>(std::min<int64_t>(W, r1 - r));
        store_n(load_n(yf + t * out_features + r, n), y + t * out_features + r, n);
      }
  }
}

int64_t gated_mlp_workspace_floats(int64_t tokens, int64_t hidden, int64_t inter) {
  const int64_t threads = omp_get_max_threads();
  // x in float32, then per thread: gate and up values of its slice of the
  // intermediate (2 x tokens x chunk), and its partial output (tokens x hidden).
  return tokens * hidden + 2 * tokens * (inter + threads * W) + threads * tokens * hidden;
}

template <typename T>
void gated_mlp(T* out, const T* x, const T* gate_up, const T* down, int64_t tokens,
               int64_t hidden, int64_t inter, float* workspace) {
  float* xf = workspace;
  detail::convert(xf, x, tokens * hidden);
  float* act_base = xf + tokens * hidden;
  float* partial_base = act_base + 2 * tokens * (inter + omp_get_max_threads() * W);
#pragma omp parallel
  {
    const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t chunk = chunk_for(inter, nt);
    const int64_t i0 = std::min(inter, tid * chunk), i1 = std::min(inter, i0 + chunk);
    const int64_t len = i1 - i0;
    float* gate = act_base + 2 * tid * tokens * chunk;  // [tokens, chunk]
    float* up = gate + tokens * chunk;                  // [tokens, chunk]
    float* partial = partial_base + tid * tokens * hidden;  // [tokens, hidden]
    if (len > 0) {
      const detail::DenseRows<T> rows{gate_up, hidden};
      detail::linear_rows(gate, chunk, xf, hidden, rows.from(i0), tokens, hidden, 0, len);
      detail::linear_rows(up, chunk, xf, hidden, rows.from(inter + i0), tokens, hidden, 0, len);
      for (int64_t t = 0; t < tokens; ++t) {
        float* g = gate + t * chunk;
        const float* u = up + t * chunk;
        for (int64_t i = 0; i < len; i += W) {
          const int n = static_cast<int>(len - i < W ? len - i : W);
          store_n(silu(load_n(g + i, n)) * load_n(u + i, n), g + i, n);
        }
      }
      // This thread's slice of the intermediate times the matching columns of down.
      detail::linear_rows(partial, hidden, gate, chunk, detail::DenseRows<T>{down + i0, inter}, tokens,
                          len, 0, hidden);
    } else {
      std::fill(partial, partial + tokens * hidden, 0.0f);
    }
#pragma omp barrier
    const int64_t total = tokens * hidden;
    const int64_t per = ceil_div(ceil_div(total, nt), W) * W;
    const int64_t e0 = std::min(total, tid * per), e1 = std::min(total, e0 + per);
    for (int64_t e = e0; e < e1; e += W) {
      const int n = static_cast<int>(e1 - e < W ? e1 - e : W);
      VecF s = VecF::zero();
      for (int64_t p = 0; p < nt; ++p) s = s + load_n(partial_base + p * total + e, n);
      store_n(s, out + e, n);
    }
  }
}

#define PYRUNTIME_INSTANTIATE(T)                                                           \
  template void linear<T>(T*, const T*, const T*, int64_t, int64_t, int64_t, float*);      \
  template void gated_mlp<T>(T*, const T*, const T*, const T*, int64_t, int64_t, int64_t,  \
                             float*);
PYRUNTIME_INSTANTIATE(float)
PYRUNTIME_INSTANTIATE(bf16)
#undef PYRUNTIME_INSTANTIATE

}  // namespace pyruntime::cpu
