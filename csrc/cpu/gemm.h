// The packed outer-product GEMM of prefill chunks (many tokens per weight row), portable FMAs.
#pragma once

#include "vec.h"
#include "weight_rows.h"

namespace pyruntime::cpu::PYRUNTIME_ISA::detail {

// Products over many tokens (prefill chunks): a packed outer-product GEMM. kPanelRows rows
// of w are packed once per panel, transposed to [in, kPanelRows] float32, into a per-thread
// buffer; every group of up to kGemmTokens tokens then keeps panel x tokens sums in
// registers, with one packed load per row vector and one broadcast of x per token and k.
// (The sums run over k in order, so they differ in rounding from linear_rows.)
constexpr int kPanelRows = 2 * VecF::W;
#if defined(PYRUNTIME_VEC_AVX512)
constexpr int kGemmTokens = 12;  // 24 accumulators of the 32 zmm registers
#else
constexpr int kGemmTokens = 6;   // 12 of the 16 ymm registers
#endif

inline int64_t gemm_pack_floats(int64_t in) { return in * kPanelRows; }

// packed[k, j] = w[j, k] for the `rows` (<= kPanelRows) rows of w; zeros past them. A block
// of W columns of every row is transposed in registers (AVX-512: two 16 x 16 tiles) or goes
// through a small buffer, so the packed rows are written in order.
template <typename Rows>
inline void gemm_pack(float* packed, const Rows& w, int rows, int64_t in) {
  constexpr int W = VecF::W;
  alignas(64) float block[kPanelRows * W];  // [row j][column kk]
  for (int j = rows; j < kPanelRows; ++j) VecF::zero().store(block + j * W);
  for (int64_t k0 = 0; k0 < in; k0 += W) {
    const int n = static_cast<int>(in - k0 < W ? in - k0 : W);
#if defined(PYRUNTIME_VEC_AVX512)
    static_assert(kPanelRows == 2 * W, "two tiles per block");
    if (n == W) {
      VecF t[kPanelRows];
      for (int j = 0; j < kPanelRows; ++j) t[j] = j < rows ? w.load(j, k0, W) : VecF::zero();
      transpose16(t);
      transpose16(t + W);
      for (int kk = 0; kk < W; ++kk) {
        t[kk].store(packed + (k0 + kk) * kPanelRows);
        t[W + kk].store(packed + (k0 + kk) * kPanelRows + W);
      }
      continue;
    }
#endif
    for (int j = 0; j < rows; ++j) w.load(j, k0, n).store(block + j * W);
    for (int kk = 0; kk < n; ++kk) {
      float* dst = packed + (k0 + kk) * kPanelRows;
      for (int j = 0; j < kPanelRows; ++j) dst[j] = block[j * W + kk];
    }
  }
}

// One k step of the micro-kernel: acc{0,1}[t] += packed row (two vectors) * x[t * x_stride].
// (Always inlined: the accumulator arrays must stay in registers.)
template <int NT>
__attribute__((always_inline)) inline void gemm_step(VecF (&acc0)[NT], VecF (&acc1)[NT], const float* p,
                                                     const float* x, int64_t x_stride) {
  const VecF w0 = VecF::load(p), w1 = VecF::load(p + VecF::W);
  for (int t = 0; t < NT; ++t) {
    const VecF xb = VecF::set1(x[t * x_stride]);
    acc0[t] = VecF::fma(w0, xb, acc0[t]);
    acc1[t] = VecF::fma(w1, xb, acc1[t]);
  }
}

template <int NT, bool Accumulate>
inline void gemm_micro(float* y, int64_t y_stride, const float* x, int64_t x_stride,
                       const float* packed, int rows, int64_t in) {
  constexpr int W = VecF::W;
  VecF acc0[NT], acc1[NT];
  for (int t = 0; t < NT; ++t) acc0[t] = acc1[t] = VecF::zero();
  // k in order (the sums' rounding does not change), two steps per iteration: one step's
  // loop overhead and loads take issue slots the FMAs need (three or four steps lose again).
  int64_t k = 0;
  for (; k + 2 <= in; k += 2) {
    gemm_step<NT>(acc0, acc1, packed + k * kPanelRows, x + k, x_stride);
    gemm_step<NT>(acc0, acc1, packed + (k + 1) * kPanelRows, x + k + 1, x_stride);
  }
  if (k < in) gemm_step<NT>(acc0, acc1, packed + k * kPanelRows, x + k, x_stride);
  const int n0 = rows < W ? rows : W, n1 = rows - n0;
  for (int t = 0; t < NT; ++t) {
    float* yt = y + t * y_stride;
    if (Accumulate) {
      acc0[t] = acc0[t] + load_n(yt, n0);
      if (n1 > 0) acc1[t] = acc1[t] + load_n(yt + W, n1);
    }
    store_n(acc0[t], yt, n0);
    if (n1 > 0) store_n(acc1[t], yt + W, n1);
  }
}

template <bool Accumulate, int NT = kGemmTokens>
inline void gemm_micro_n(int nt, float* y, int64_t y_stride, const float* x, int64_t x_stride,
                         const float* packed, int rows, int64_t in) {
  if constexpr (NT >= 1) {
    if (nt == NT) return gemm_micro<NT, Accumulate>(y, y_stride, x, x_stride, packed, rows, in);
    gemm_micro_n<Accumulate, NT - 1>(nt, y, y_stride, x, x_stride, packed, rows, in);
  }
}

}  // namespace pyruntime::cpu::PYRUNTIME_ISA::detail
