// Device helpers shared by the CUDA kernels: storage conversions, reductions, dispatch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <stdexcept>
#include <string>

#include "pyruntime/common.h"

namespace pyruntime::cuda {

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half(v); }

// The 16 bytes of u as 16 / sizeof(T) elements of T, converted to float (in memory order).
template <typename T>
__device__ __forceinline__ void unpack16(const uint4& u, float* out) {
  if constexpr (sizeof(T) == 4) {
    out[0] = __uint_as_float(u.x);
    out[1] = __uint_as_float(u.y);
    out[2] = __uint_as_float(u.z);
    out[3] = __uint_as_float(u.w);
  } else {
    const unsigned words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const unsigned short lo = static_cast<unsigned short>(words[i] & 0xffffu);
      const unsigned short hi = static_cast<unsigned short>(words[i] >> 16);
      T a, b;
      memcpy(&a, &lo, 2);
      memcpy(&b, &hi, 2);
      out[2 * i] = to_f(a);
      out[2 * i + 1] = to_f(b);
    }
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block; every thread gets the result. blockDim.x a multiple of 32, <= 1024.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int nwarps = (blockDim.x + 31) >> 5;
  v = lane < nwarps ? partial[lane] : 0.0f;
  return warp_sum(v);
}

inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": CUDA launch failed: " + cudaGetErrorString(err));
}

// A property of a device that never changes, queried once per device through query(device,
// &value) (a CUDA call returning cudaError_t) and then read from a cache: the launchers ask
// on every call, and the queries cost microseconds (the occupancy one most). 0 where the query
// fails (asked again next time).
template <typename Tag, typename Query>
int cached_device_value(int device, Query&& query) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices];  // 0: not known yet
  int value = 0;
  if (device < 0 || device >= kMaxDevices) return query(device, &value) == cudaSuccess ? value : 0;
  value = cache[device].load(std::memory_order_relaxed);
  if (value == 0 && query(device, &value) == cudaSuccess) cache[device].store(value, std::memory_order_relaxed);
  return value;
}

inline int current_device() {
  int device = -1;
  return cudaGetDevice(&device) == cudaSuccess ? device : -1;
}

struct SmCountTag {};
inline int sm_count(int device) {
  return cached_device_value<SmCountTag>(
      device, [](int d, int* v) { return cudaDeviceGetAttribute(v, cudaDevAttrMultiProcessorCount, d); });
}

struct CapabilityTag {};
inline int capability_major(int device) {
  return cached_device_value<CapabilityTag>(
      device, [](int d, int* v) { return cudaDeviceGetAttribute(v, cudaDevAttrComputeCapabilityMajor, d); });
}

// Blocks of Kernel (Threads threads, no dynamic shared memory) one multiprocessor of the
// device holds at once (the occupancy query runs on the current device).
template <auto Kernel, int Threads>
int blocks_per_sm(int device) {
  return cached_device_value<std::integral_constant<decltype(Kernel), Kernel>>(
      device, [](int, int* v) { return cudaOccupancyMaxActiveBlocksPerMultiprocessor(v, Kernel, Threads, 0); });
}

// Calls f(T{}) with T the CUDA storage type of dtype.
template <typename F>
void dispatch(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float32: return f(float{});
    case DType::BFloat16: return f(__nv_bfloat16{});
    case DType::Float16: return f(__half{});
  }
}

inline unsigned grid_1d(int64_t n, int threads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

}  // namespace pyruntime::cuda
