#include "common.cuh"
#include "pyruntime/cuda_kernels.h"

namespace pyruntime::cuda {

namespace {

__device__ __forceinline__ float silu_f(float x) { return x / (1.0f + __expf(-x)); }

// grid (row chunks, rows). \param out [rows, inter]; x [rows, 2*inter]
template <typename T>
__global__ void silu_and_mul_kernel(T* out, int64_t out_stride, const T* x, int64_t x_stride,
                                    int64_t rows, int64_t inter) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const T* g = x + r * x_stride;
    T* o = out + r * out_stride;
    for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < inter; i += gridDim.x * blockDim.x)
      o[i] = from_f<T>(silu_f(to_f(g[i])) * to_f(g[inter + i]));
  }
}

}  // namespace

void silu_and_mul(DType dtype, void* out, int64_t out_stride, const void* x, int64_t x_stride,
                  int64_t rows, int64_t inter, cudaStream_t stream) {
  if (rows == 0 || inter == 0) return;
  const dim3 grid(grid_1d(inter, 256) < 64 ? grid_1d(inter, 256) : 64, static_cast<unsigned>(rows < 65535 ? rows : 65535));
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    silu_and_mul_kernel<T><<<grid, 256, 0, stream>>>(static_cast<T*>(out), out_stride,
                                                     static_cast<const T*>(x), x_stride, rows, inter);
  });
  check_launch("silu_and_mul");
}

}  // namespace pyruntime::cuda
