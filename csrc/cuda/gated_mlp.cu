#include "common.cuh"
#include "gemv.cuh"
#include "pyruntime/cuda_kernels.h"

namespace pyruntime::cuda {

namespace {

using gemv::kMaxTokens;

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
    gemv::gate_up_silu<T, float>(workspace, inter, static_cast<const T*>(x), hidden, static_cast<const T*>(gate_up),
                                 tokens, hidden, inter, stream);
    gemv::linear<T, float, T, false>(static_cast<T*>(out), hidden, workspace, inter, static_cast<const T*>(down),
                                     nullptr, tokens, inter, hidden, stream);
  });
  check_launch("gated_mlp");
}

}  // namespace pyruntime::cuda
