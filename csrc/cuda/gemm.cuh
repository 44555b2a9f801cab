// Prompt-time matrix products on the tensor cores: y (+)= x w^T for many tokens, x [M, K] and
// w [N, K] in bfloat16 or float16 (K contiguous), float32 accumulation (WMMA 16x16x16).
// A block computes a 64 x 128 tile of y with 8 warps (32 x 32 each), staging 32-wide K slices of
// x and w through shared memory; the next slice is loaded into registers while the current one
// is multiplied. The gate/up mode puts 64 gate rows and the matching 64 up rows in one tile and
// writes silu(gate) * up, so the [M, 2I] product never reaches memory.
#pragma once

#include <mma.h>

#include "common.cuh"

namespace pyruntime::cuda::gemm {

constexpr int kBM = 64, kBN = 128, kBK = 32, kPad = 8;
constexpr int kThreads = 256;

enum class Epilogue { Store, Accumulate, GateUpSilu };

// Needs sm_80 (bfloat16 WMMA); the host checks the device before choosing this path.
template <typename T, typename OT, Epilogue E>
__global__ void __launch_bounds__(kThreads)
    gemm_kernel(OT* y, int64_t y_stride, const T* x, int64_t x_stride, const T* w, const T* bias, int64_t M,
                int64_t N, int64_t K) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  constexpr int kLd = kBK + kPad;  // shared row length (elements), a multiple of 8
  constexpr int kCld = kBN + 4;    // epilogue row length (floats)
  constexpr size_t kStage = static_cast<size_t>(kBM + kBN) * kLd * sizeof(T);
  constexpr size_t kEpi = static_cast<size_t>(kBM) * kCld * sizeof(float);
  __shared__ __align__(32) unsigned char smem[kStage > kEpi ? kStage : kEpi];
  T* As = reinterpret_cast<T*>(smem);
  T* Bs = As + kBM * kLd;
  float* Cs = reinterpret_cast<float*>(smem);

  const int tid = threadIdx.x, warp = tid >> 5;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kBM;
  // Column n of the tile reads weight row wrow(n) (-1: past the end, zeros).
  constexpr int kHalf = kBN / 2;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * (E == Epilogue::GateUpSilu ? kHalf : kBN);
  const auto wrow = [&](int n) -> int64_t {
    if constexpr (E == Epilogue::GateUpSilu) {  // N is the intermediate size; rows N.. are up
      const int64_t j = n0 + (n % kHalf);
      return j < N ? (n < kHalf ? j : N + j) : -1;
    } else {
      const int64_t r = n0 + n;
      return r < N ? r : -1;
    }
  };
  // Each thread moves one 8-element vector of the x slice and two of the w slice per step.
  constexpr int kVecs = kBK / 8;
  const int a_r = tid / kVecs, a_c = (tid % kVecs) * 8;
  const int64_t a_row = m0 + a_r;
  int64_t b_rows[2];
  int b_r[2], b_c[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int v = tid + i * kThreads;
    b_r[i] = v / kVecs;
    b_c[i] = (v % kVecs) * 8;
    b_rows[i] = wrow(b_r[i]);
  }
  uint4 a_reg, b_reg[2];
  const auto load = [&](int64_t k0) {
    const uint4 zero = make_uint4(0, 0, 0, 0);
    a_reg = a_row < M && k0 + a_c < K ? *reinterpret_cast<const uint4*>(x + a_row * x_stride + k0 + a_c) : zero;
#pragma unroll
    for (int i = 0; i < 2; ++i)
      b_reg[i] = b_rows[i] >= 0 && k0 + b_c[i] < K
                     ? *reinterpret_cast<const uint4*>(w + b_rows[i] * K + k0 + b_c[i])
                     : zero;
  };
  const int wm = warp / 4, wn = warp % 4;  // this warp's 32 x 32 block of the tile
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  load(0);
  for (int64_t k0 = 0; k0 < K; k0 += kBK) {
    *reinterpret_cast<uint4*>(As + a_r * kLd + a_c) = a_reg;
#pragma unroll
    for (int i = 0; i < 2; ++i) *reinterpret_cast<uint4*>(Bs + b_r[i] * kLd + b_c[i]) = b_reg[i];
    __syncthreads();
    if (k0 + kBK < K) load(k0 + kBK);  // in flight while the tensor cores work
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], As + (wm * 32 + i * 16) * kLd + kk, kLd);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], Bs + (wn * 32 + j * 16) * kLd + kk, kLd);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * kCld + wn * 32 + j * 16, acc[i][j], kCld,
                              wmma::mem_row_major);
  __syncthreads();
  if constexpr (E == Epilogue::GateUpSilu) {
    for (int e = tid; e < kBM * kHalf; e += kThreads) {
      const int r = e / kHalf, c = e % kHalf;
      const int64_t m = m0 + r, j = n0 + c;
      if (m < M && j < N) {
        const float g = Cs[r * kCld + c], u = Cs[r * kCld + kHalf + c];
        y[m * y_stride + j] = from_f<OT>(g / (1.0f + __expf(-g)) * u);
      }
    }
  } else {
    for (int e = tid; e < kBM * kBN; e += kThreads) {
      const int r = e / kBN, c = e % kBN;
      const int64_t m = m0 + r, n = n0 + c;
      if (m < M && n < N) {
        OT& out = y[m * y_stride + n];
        const float v = Cs[r * kCld + c] + (bias ? to_f(bias[n]) : 0.0f);
        out = from_f<OT>(E == Epilogue::Accumulate ? to_f(out) + v : v);
      }
    }
  }
#endif
}

// Whether this path applies: a 16-bit type, an sm_80+ device, K and the row stride of x whole
// 16-byte vectors, x and w 16-byte aligned.
template <typename T>
bool usable(const T* x, int64_t x_stride, const T* w, int64_t K, int device) {
  if constexpr (sizeof(T) != 2) {
    return false;
  } else {
    const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    return capability_major(device) >= 8 && K % 8 == 0 && x_stride % 8 == 0 && aligned(x) && aligned(w);
  }
}

// y[M, N] (+)= x[M, K] w[N, K]^T (+ bias), or with GateUpSilu: y[M, N] = silu(x g^T) * (x u^T)
// where w holds the N gate rows and then the N up rows.
template <Epilogue E, typename T, typename OT>
void launch(OT* y, int64_t y_stride, const T* x, int64_t x_stride, const T* w, const T* bias, int64_t M, int64_t N,
            int64_t K, cudaStream_t stream) {
  const int64_t cols = E == Epilogue::GateUpSilu ? kBN / 2 : kBN;
  const dim3 grid(static_cast<unsigned>((N + cols - 1) / cols), static_cast<unsigned>((M + kBM - 1) / kBM));
  gemm_kernel<T, OT, E><<<grid, kThreads, 0, stream>>>(y, y_stride, x, x_stride, w, bias, M, N, K);
}

}  // namespace pyruntime::cuda::gemm
