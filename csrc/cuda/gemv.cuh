// Weight rows times a few token rows (the decode-time matrix products): one warp per weight
// row, every lane loading 16 bytes of the row per chunk and UNROLL chunks before it multiplies,
// so that enough loads are in flight to keep the memory system busy. The engine's linear
// layers and the gated MLP op share it.
#pragma once

#include "common.cuh"

namespace pyruntime::cuda::gemv {

constexpr int kWarps = 4;      // weight rows per block
constexpr int kMaxTokens = 16; // tokens per launch (token counts are bucketed to 1, 2, 4, 8, 16)
constexpr int kUnroll = 4;     // 16-byte chunks in flight per lane

template <typename T>
inline constexpr int kVec = 16 / static_cast<int>(sizeof(T));  // elements in 16 bytes

// out[0..N) = p[0..N) as float. N * sizeof(T) is 1 element or a multiple of 16 bytes, and then
// p is 16-byte aligned.
template <int N, typename T>
__device__ __forceinline__ void load_f(const T* p, float* out) {
  if constexpr (N == 1) {
    out[0] = to_f(p[0]);
  } else {
    constexpr int per = kVec<T>;
    static_assert(N % per == 0, "load_f: whole 16-byte vectors only");
#pragma unroll
    for (int s = 0; s < N / per; ++s) {
      unpack16<T>(reinterpret_cast<const uint4*>(p)[s], out + s * per);
    }
  }
}

// acc[t] = w . x[t] (every lane holds the sums on return) for t < tokens; acc[t >= tokens] = 0.
// V elements per lane per chunk: kVec<T> (16-byte loads; in % V == 0, w and every x row
// 16-byte aligned) or 1.
template <int NT, int V, typename T, typename XT>
__device__ __forceinline__ void row_dots(const T* w, const XT* x, int64_t x_stride, int tokens, int64_t in,
                                         float (&acc)[NT]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
  constexpr int64_t kStep = 32 * V;
  int64_t c = static_cast<int64_t>(lane) * V;
  for (; c + (kUnroll - 1) * kStep < in; c += kUnroll * kStep) {
    float wf[kUnroll][V];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) load_f<V>(w + c + u * kStep, wf[u]);
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      if (NT > 1 && t >= tokens) break;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        float xf[V];
        load_f<V>(x + t * x_stride + c + u * kStep, xf);
#pragma unroll
        for (int v = 0; v < V; ++v) acc[t] = fmaf(wf[u][v], xf[v], acc[t]);
      }
    }
  }
  for (; c < in; c += kStep) {
    float wf[V];
    load_f<V>(w + c, wf);
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      if (NT > 1 && t >= tokens) break;
      float xf[V];
      load_f<V>(x + t * x_stride + c, xf);
#pragma unroll
      for (int v = 0; v < V; ++v) acc[t] = fmaf(wf[v], xf[v], acc[t]);
    }
  }
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = warp_sum(acc[t]);
}

// y[t, r] (+)= w[r, :] . x[t, :] (+ bias[r]); one warp per weight row.
template <int NT, int V, typename T, typename XT, typename OT, bool Accumulate>
__global__ void __launch_bounds__(kWarps * 32) linear_kernel(OT* y, int64_t y_stride, const XT* x,
                                                             int64_t x_stride, const T* w, const T* bias,
                                                             int tokens, int64_t in, int64_t rows) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (r >= rows) return;
  float acc[NT];
  row_dots<NT, V>(w + r * in, x, x_stride, tokens, in, acc);
  const int lane = threadIdx.x & 31;
  const float b = bias ? to_f(bias[r]) : 0.0f;
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    if (lane == t && t < tokens) {
      OT& out = y[t * y_stride + r];
      out = from_f<OT>((Accumulate ? to_f(out) : 0.0f) + acc[t] + b);
    }
  }
}

// act[t, i] = silu(gate_i . x[t]) * (up_i . x[t]) with gate_i row i and up_i row inter + i of
// gate_up; one warp per intermediate index (both rows read by the same warp).
template <int NT, int V, typename T, typename OT>
__global__ void __launch_bounds__(kWarps * 32) gate_up_silu_kernel(OT* act, int64_t act_stride, const T* x,
                                                                   int64_t x_stride, const T* gate_up, int tokens,
                                                                   int64_t hidden, int64_t inter) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (i >= inter) return;
  float g[NT], u[NT];
  row_dots<NT, V>(gate_up + i * hidden, x, x_stride, tokens, hidden, g);
  row_dots<NT, V>(gate_up + (inter + i) * hidden, x, x_stride, tokens, hidden, u);
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int t = 0; t < NT; ++t)
    if (lane == t && t < tokens) act[t * act_stride + i] = from_f<OT>(g[t] / (1.0f + __expf(-g[t])) * u[t]);
}

// Whether the 16-byte path fits: in a multiple of the vector, every row start aligned.
template <typename T, typename XT>
bool vectorizable(const T* w, const XT* x, int64_t x_stride, int64_t in) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return in % kVec<T> == 0 && kVec<T> % kVec<XT> == 0 && x_stride % kVec<XT> == 0 && aligned(w) && aligned(x);
}

// Calls f(std::integral_constant<int, NT>{}, std::integral_constant<int, V>{}) with NT the
// token bucket of `tokens` (<= kMaxTokens) and V the chunk width.
template <typename T, typename F>
void dispatch_shape(int64_t tokens, bool vec, F&& f) {
  const auto with_nt = [&](auto nt) {
    if (vec)
      f(nt, std::integral_constant<int, kVec<T>>{});
    else
      f(nt, std::integral_constant<int, 1>{});
  };
  if (tokens <= 1)
    with_nt(std::integral_constant<int, 1>{});
  else if (tokens <= 2)
    with_nt(std::integral_constant<int, 2>{});
  else if (tokens <= 4)
    with_nt(std::integral_constant<int, 4>{});
  else if (tokens <= 8)
    with_nt(std::integral_constant<int, 8>{});
  else
    with_nt(std::integral_constant<int, 16>{});
}

// y (+)= x w^T (+ bias) for any number of tokens, in launches of kMaxTokens tokens.
template <typename T, typename XT, typename OT, bool Accumulate>
void linear(OT* y, int64_t y_stride, const XT* x, int64_t x_stride, const T* w, const T* bias, int64_t tokens,
            int64_t in, int64_t rows, cudaStream_t stream) {
  for (int64_t t0 = 0; t0 < tokens; t0 += kMaxTokens) {
    const int64_t nt = tokens - t0 < kMaxTokens ? tokens - t0 : kMaxTokens;
    const XT* xt = x + t0 * x_stride;
    dispatch_shape<T>(nt, vectorizable(w, xt, x_stride, in), [&](auto NT, auto V) {
      linear_kernel<NT.value, V.value, T, XT, OT, Accumulate><<<grid_1d(rows, kWarps), kWarps * 32, 0, stream>>>(
          y + t0 * y_stride, y_stride, xt, x_stride, w, bias, static_cast<int>(nt), in, rows);
    });
  }
}

// act = silu(x gate^T) * (x up^T) for any number of tokens, in launches of kMaxTokens tokens.
template <typename T, typename OT>
void gate_up_silu(OT* act, int64_t act_stride, const T* x, int64_t x_stride, const T* gate_up, int64_t tokens,
                  int64_t hidden, int64_t inter, cudaStream_t stream) {
  for (int64_t t0 = 0; t0 < tokens; t0 += kMaxTokens) {
    const int64_t nt = tokens - t0 < kMaxTokens ? tokens - t0 : kMaxTokens;
    const T* xt = x + t0 * x_stride;
    dispatch_shape<T>(nt, vectorizable(gate_up, xt, x_stride, hidden), [&](auto NT, auto V) {
      gate_up_silu_kernel<NT.value, V.value, T, OT><<<grid_1d(inter, kWarps), kWarps * 32, 0, stream>>>(
          act + t0 * act_stride, act_stride, xt, x_stride, gate_up, static_cast<int>(nt), hidden, inter);
    });
  }
}

}  // namespace pyruntime::cuda::gemv
