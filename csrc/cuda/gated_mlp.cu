#include "common.cuh"
#include "pyruntime/cuda_kernels.h"

namespace pyruntime::cuda {

namespace {

constexpr int kMaxTokens = 16;  // the binding routes longer inputs to GEMMs
constexpr int kWarps = 8;

// Dot products of one weight row with up to kMaxTokens token rows, by one warp.
// \param w [in]; x [tokens, in] (row stride in); acc [tokens] per lane, summed on return
template <typename T, typename XT>
__device__ __forceinline__ void warp_row_dots(const T* w, const XT* x, int64_t tokens, int64_t in,
                                              float* acc) {
  const int lane = threadIdx.x & 31;
  for (int t = 0; t < kMaxTokens; ++t) acc[t] = 0.0f;
  for (int64_t i = lane; i < in; i += 32) {
    const float wv = to_f(w[i]);
#pragma unroll
    for (int t = 0; t < kMaxTokens; ++t)
      if (t < tokens) acc[t] += wv * to_f(x[t * in + i]);
  }
#pragma unroll
  for (int t = 0; t < kMaxTokens; ++t)
    if (t < tokens) acc[t] = warp_sum(acc[t]);
}

// act[t, i] = silu(gate_i . x[t]) * (up_i . x[t]); one warp per intermediate index.
template <typename T>
__global__ void gate_up_kernel(float* act, const T* x, const T* gate_up, int64_t tokens,
                               int64_t hidden, int64_t inter) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (i >= inter) return;
  float g[kMaxTokens], u[kMaxTokens];
  warp_row_dots(gate_up + i * hidden, x, tokens, hidden, g);
  warp_row_dots(gate_up + (inter + i) * hidden, x, tokens, hidden, u);
  if ((threadIdx.x & 31) == 0)
    for (int64_t t = 0; t < tokens; ++t) act[t * inter + i] = g[t] / (1.0f + __expf(-g[t])) * u[t];
}

// out[t, h] = down_h . act[t]; one warp per hidden index.
template <typename T>
__global__ void down_kernel(T* out, const float* act, const T* down, int64_t tokens,
                            int64_t hidden, int64_t inter) {
  const int64_t h = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (h >= hidden) return;
  float acc[kMaxTokens];
  warp_row_dots(down + h * inter, act, tokens, inter, acc);
  if ((threadIdx.x & 31) == 0)
    for (int64_t t = 0; t < tokens; ++t) out[t * hidden + h] = from_f<T>(acc[t]);
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
    gate_up_kernel<T><<<grid_1d(inter, kWarps), kWarps * 32, 0, stream>>>(
        workspace, static_cast<const T*>(x), static_cast<const T*>(gate_up), tokens, hidden, inter);
    down_kernel<T><<<grid_1d(hidden, kWarps), kWarps * 32, 0, stream>>>(
        static_cast<T*>(out), workspace, static_cast<const T*>(down), tokens, hidden, inter);
  });
  check_launch("gated_mlp");
}

}  // namespace pyruntime::cuda
