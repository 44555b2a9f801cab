#include "common.cuh"
#include "gemv.cuh"
#include "pyruntime/cuda_kernels.h"

namespace pyruntime::cuda {

namespace {

using gemv::kMaxTokens;

// act[t, i] = silu(gate_i . x[t]) * (up_i . x[t]); one warp per intermediate index.
template <int NT, int V, typename T>
__global__ void __launch_bounds__(gemv::kWarps * 32) gate_up_kernel(float* act, const T* x, const T* gate_up,
                                                                    int tokens, int64_t hidden, int64_t inter) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * gemv::kWarps + (threadIdx.x >> 5);
  if (i >= inter) return;
  float g[NT], u[NT];
  gemv::row_dots<NT, V>(gate_up + i * hidden, x, hidden, tokens, hidden, g);
  gemv::row_dots<NT, V>(gate_up + (inter + i) * hidden, x, hidden, tokens, hidden, u);
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int t = 0; t < NT; ++t)
    if (lane == t && t < tokens) act[t * inter + i] = g[t] / (1.0f + __expf(-g[t])) * u[t];
}

void check_tokens(int64_t tokens, const char* what) {
  if (tokens > kMaxTokens)
    throw std::invalid_argument(std::string(what) + ": at most 16 tokens per call on CUDA, got " +
                                std::to_string(tokens));
}

}  // namespace

int64_t gated_mlp_workspace_floats(int64_t tokens, int64_t hidden, int64_t inter) {
  (void)hidden;
  return tokens * inter;  // the activated intermediate; small enough to stay in L2
}

void gated_mlp(DType dtype, void* out, const void* x, const void* gate_up, const void* down,
               int64_t tokens, int64_t hidden, int64_t inter, float* workspace,
               cudaStream_t stream) {
  check_tokens(tokens, "gated_mlp");
  if (tokens == 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xt = static_cast<const T*>(x);
    const T* gu = static_cast<const T*>(gate_up);
    gemv::dispatch_shape<T>(tokens, gemv::vectorizable(gu, xt, hidden, hidden), [&](auto NT, auto V) {
      gate_up_kernel<NT.value, V.value, T><<<grid_1d(inter, gemv::kWarps), gemv::kWarps * 32, 0, stream>>>(
          workspace, xt, gu, static_cast<int>(tokens), hidden, inter);
    });
    gemv::linear<T, float, T, false>(static_cast<T*>(out), hidden, workspace, inter, static_cast<const T*>(down),
                                     nullptr, tokens, inter, hidden, stream);
  });
  check_launch("gated_mlp");
}

}  // namespace pyruntime::cuda
