#include "common.cuh"
#include "pyruntime/cuda_kernels.h"

namespace pyruntime::cuda {

namespace {

// One block per row. \param out/x [rows, hidden] with row strides; weight [hidden]
template <typename T>
__global__ void rms_norm_kernel(T* out, int64_t out_stride, const T* x, int64_t x_stride,
                                const T* weight, int64_t hidden, float eps) {
  const T* xr = x + blockIdx.x * x_stride;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float v = to_f(xr[i]);
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss) / static_cast<float>(hidden) + eps);
  T* o = out + blockIdx.x * out_stride;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x)
    o[i] = from_f<T>(to_f(xr[i]) * inv * to_f(weight[i]));
}

template <typename T>
__global__ void fused_add_rms_norm_kernel(T* x, int64_t x_stride, T* residual,
                                          int64_t residual_stride, const T* weight,
                                          int64_t hidden, float eps) {
  T* xr = x + blockIdx.x * x_stride;
  T* rr = residual + blockIdx.x * residual_stride;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    const T s = from_f<T>(to_f(xr[i]) + to_f(rr[i]));
    rr[i] = s;
    const float v = to_f(s);
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss) / static_cast<float>(hidden) + eps);
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x)
    xr[i] = from_f<T>(to_f(rr[i]) * inv * to_f(weight[i]));
}

int threads_for(int64_t hidden) { return hidden >= 1024 ? 1024 : (hidden >= 256 ? 256 : 64); }

}  // namespace

void rms_norm(DType dtype, void* out, int64_t out_stride, const void* x, int64_t x_stride,
              const void* weight, int64_t rows, int64_t hidden, float eps, cudaStream_t stream) {
  if (rows == 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    rms_norm_kernel<T><<<rows, threads_for(hidden), 0, stream>>>(
        static_cast<T*>(out), out_stride, static_cast<const T*>(x), x_stride,
        static_cast<const T*>(weight), hidden, eps);
  });
  check_launch("rms_norm");
}

void fused_add_rms_norm(DType dtype, void* x, int64_t x_stride, void* residual,
                        int64_t residual_stride, const void* weight, int64_t rows,
                        int64_t hidden, float eps, cudaStream_t stream) {
  if (rows == 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    fused_add_rms_norm_kernel<T><<<rows, threads_for(hidden), 0, stream>>>(
        static_cast<T*>(x), x_stride, static_cast<T*>(residual), residual_stride,
        static_cast<const T*>(weight), hidden, eps);
  });
  check_launch("fused_add_rms_norm");
}

}  // namespace pyruntime::cuda
