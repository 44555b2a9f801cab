#include <math_constants.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "common.cuh"
#include "pyruntime/cuda_kernels.h"
#include "pyruntime/dispatch.h"

namespace pyruntime::cuda {

namespace {

constexpr int kWarps = 4;  // warps per block, each over its own keys of the split
// Keys of one lane group per iteration, loaded before use (fewer with 8 heads per block, whose
// accumulators and query slices fill the registers).
template <int G>
inline constexpr int kKeysPerLane = G >= 8 ? 2 : 4;

// How a key row is spread over a warp: each lane holds VPL 16-byte vectors (VE elements each)
// of one key; LPK lanes (a power of two) hold a whole row, so a warp holds KPW keys at once.
template <typename T, int D>
struct KeyLayout {
  static constexpr int VE = 16 / static_cast<int>(sizeof(T));
  static_assert(D % VE == 0, "head size must be a multiple of a 16-byte vector");
  static constexpr int NV = D / VE;  // vectors per row
  static constexpr int LPK = NV >= 32 ? 32 : NV > 8 ? (NV > 16 ? 32 : 16) : (NV > 4 ? 8 : (NV > 2 ? 4 : NV));
  static constexpr int VPL = (NV + LPK - 1) / LPK;
  static constexpr int KPW = 32 / LPK;
  static constexpr int NE = VPL * VE;  // features per lane
};

// Record of one (batch, query head, split): acc [D], then m, then l.
// \param records [batch, num_q_heads, num_splits, D + 2]
// Query b sits at q + b * q_stride and attends cache row cache_rows[b] (b when null). A block
// takes G query heads of one KV head over one split of the keys (every num_splits-th run of
// them); each key row is read once (16-byte loads, kKeysPerLane keys per lane group in
// flight) for all G heads.
template <typename T, int D, int G>
__global__ void __launch_bounds__(kWarps * 32)
    decode_split_kernel(float* records, const T* q, int64_t q_stride, const T* k_cache, const T* v_cache,
                        const int64_t* cache_rows, const int32_t* seq_lens, int64_t num_q_heads,
                        int64_t num_kv_heads, int64_t max_seq, float scale, int tiles) {
  using L = KeyLayout<T, D>;
  constexpr int VE = L::VE, NV = L::NV, LPK = L::LPK, VPL = L::VPL, KPW = L::KPW, NE = L::NE;
  constexpr int R = kKeysPerLane<G>;
  __shared__ float qs[G][D];
  __shared__ float wm[kWarps][G], wl[kWarps][G];
  __shared__ float wacc[kWarps][G][D];
  const int64_t b = blockIdx.z, split = blockIdx.x, num_splits = gridDim.x;
  const int64_t kvh = blockIdx.y / tiles, tile = blockIdx.y % tiles;
  const int64_t group = num_q_heads / num_kv_heads;
  const int64_t g0 = tile * G;
  const int ng = static_cast<int>(group - g0 < G ? group - g0 : G);
  const int64_t hq0 = kvh * group + g0;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int sub = lane / LPK, pos = lane % LPK;

  for (int i = threadIdx.x; i < G * D; i += blockDim.x)
    qs[i / D][i % D] = i / D < ng ? to_f(q[b * q_stride + (hq0 + i / D) * D + i % D]) * scale : 0.0f;
  __syncthreads();

  // This lane's slice of every query (the same features of every key it sees).
  float qr[G][NE];
#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int i = 0; i < VPL; ++i)
#pragma unroll
      for (int e = 0; e < VE; ++e) {
        const int v = pos + LPK * i;
        qr[g][i * VE + e] = v < NV ? qs[g][v * VE + e] : 0.0f;
      }
  float m[G], l[G], acc[G][NE];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -CUDART_INF_F;
    l[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < NE; ++e) acc[g][e] = 0.0f;
  }
  const int64_t len = seq_lens[b];
  const int64_t row = cache_rows ? cache_rows[b] : b;
  const T* kb = k_cache + (row * num_kv_heads + kvh) * max_seq * D;
  const T* vb = v_cache + (row * num_kv_heads + kvh) * max_seq * D;
  // The splits' warps take turns over runs of kWarpKeys keys, so that any seq_len, however
  // short against max_seq, spreads over every block.
  constexpr int kWarpKeys = R * KPW;
  const int64_t stride = num_splits * kWarps * kWarpKeys;
  for (int64_t j0 = (split * kWarps + warp) * kWarpKeys; j0 < len; j0 += stride) {
    // Issue every load of this iteration first; keys past the split stay zero (the cache
    // beyond seq_len may hold anything, NaN included, and must not be touched).
    uint4 kr[R][VPL], vr[R][VPL];
    bool valid[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t j = j0 + r * KPW + sub;
      valid[r] = j < len;
#pragma unroll
      for (int i = 0; i < VPL; ++i) {
        const int v = pos + LPK * i;
        if (valid[r] && v < NV) {
          kr[r][i] = *reinterpret_cast<const uint4*>(kb + j * D + v * VE);
          vr[r][i] = *reinterpret_cast<const uint4*>(vb + j * D + v * VE);
        } else {
          kr[r][i] = make_uint4(0, 0, 0, 0);
          vr[r][i] = make_uint4(0, 0, 0, 0);
        }
      }
    }
    float s[R][G];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float kf[NE];
#pragma unroll
      for (int i = 0; i < VPL; ++i) unpack16<T>(kr[r][i], kf + i * VE);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < NE; ++e) dot = fmaf(qr[g][e], kf[e], dot);
#pragma unroll
        for (int o = LPK / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        s[r][g] = valid[r] ? dot : -CUDART_INF_F;
      }
    }
    // Online softmax per head, then the values, unpacked one key at a time (same order of sums).
    float p[G][R];
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float mx = m[g];
#pragma unroll
      for (int r = 0; r < R; ++r) mx = fmaxf(mx, s[r][g]);
      const bool seen = mx != -CUDART_INF_F;  // else nothing seen yet by this lane group
      const float corr = seen ? __expf(m[g] - mx) : 1.0f;
      float psum = 0.0f;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        p[g][r] = seen ? __expf(s[r][g] - mx) : 0.0f;
        psum += p[g][r];
      }
      l[g] = l[g] * corr + psum;
      m[g] = mx;
#pragma unroll
      for (int e = 0; e < NE; ++e) acc[g][e] *= corr;
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float vf[NE];
#pragma unroll
      for (int i = 0; i < VPL; ++i) unpack16<T>(vr[r][i], vf + i * VE);
#pragma unroll
      for (int g = 0; g < G; ++g)
#pragma unroll
        for (int e = 0; e < NE; ++e) acc[g][e] = fmaf(p[g][r], vf[e], acc[g][e]);
    }
  }
  // Merge the warp's lane groups (same feature positions, KPW apart in lanes).
#pragma unroll
  for (int o = LPK; o < 32; o <<= 1) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[g], o), lo = __shfl_xor_sync(0xffffffffu, l[g], o);
      const float mx = fmaxf(m[g], mo);
      const float ca = mx == -CUDART_INF_F ? 0.0f : __expf(m[g] - mx);
      const float cb = mx == -CUDART_INF_F ? 0.0f : __expf(mo - mx);
      l[g] = l[g] * ca + lo * cb;
#pragma unroll
      for (int e = 0; e < NE; ++e) {
        const float ao = __shfl_xor_sync(0xffffffffu, acc[g][e], o);
        acc[g][e] = acc[g][e] * ca + ao * cb;
      }
      m[g] = mx;
    }
  }
  if (sub == 0) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      if (lane == 0) {
        wm[warp][g] = m[g];
        wl[warp][g] = l[g];
      }
#pragma unroll
      for (int i = 0; i < VPL; ++i) {
        const int v = pos + LPK * i;
        if (v < NV) {
#pragma unroll
          for (int e = 0; e < VE; ++e) wacc[warp][g][v * VE + e] = acc[g][i * VE + e];
        }
      }
    }
  }
  __syncthreads();
  // Merge the warps' partial results into this split's record.
  for (int i = threadIdx.x; i < ng * D; i += blockDim.x) {
    const int g = i / D, d = i % D;
    float mx = -CUDART_INF_F;
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, wm[w][g]);
    float lsum = 0.0f, a = 0.0f;
    if (mx != -CUDART_INF_F) {
      for (int w = 0; w < kWarps; ++w) {
        const float wt = __expf(wm[w][g] - mx);
        lsum += wl[w][g] * wt;
        a += wacc[w][g][d] * wt;
      }
    }
    float* rec = records + ((b * num_q_heads + hq0 + g) * num_splits + split) * (D + 2);
    rec[d] = a;
    if (d == 0) {
      rec[D] = mx;
      rec[D + 1] = lsum;
    }
  }
}

// out[b, h] = sum_s acc_s exp(m_s - M) / sum_s l_s exp(m_s - M). One block per (b, h): its warps
// take every kCombineWarps-th split (each lane D/32 features, several splits' loads in flight),
// then the warps' partial sums merge. A record of a split that saw no keys has m = -inf.
constexpr int kCombineWarps = 4;
template <typename T, int D>
__global__ void __launch_bounds__(kCombineWarps * 32)
    decode_combine_kernel(T* out, const float* records, int64_t num_splits) {
  constexpr int NL = (D + 31) / 32;
  __shared__ float wmax[kCombineWarps];
  __shared__ float part[kCombineWarps][D + 1];  // numerators, then the denominator
  const float* rec = records + blockIdx.x * num_splits * (D + 2);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float mx = -CUDART_INF_F;
  for (int64_t s = threadIdx.x; s < num_splits; s += blockDim.x) mx = fmaxf(mx, rec[s * (D + 2) + D]);
  mx = warp_max(mx);
  if (lane == 0) wmax[warp] = mx;
  __syncthreads();
#pragma unroll
  for (int w = 0; w < kCombineWarps; ++w) mx = fmaxf(mx, wmax[w]);
  float num[NL], den = 0.0f;
#pragma unroll
  for (int i = 0; i < NL; ++i) num[i] = 0.0f;
  if (mx != -CUDART_INF_F) {
#pragma unroll 4
    for (int64_t s = warp; s < num_splits; s += kCombineWarps) {
      const float* r = rec + s * (D + 2);
      const float ms = r[D];
      const float w = ms == -CUDART_INF_F ? 0.0f : __expf(ms - mx);
      den = fmaf(r[D + 1], w, den);
#pragma unroll
      for (int i = 0; i < NL; ++i)
        if (lane + 32 * i < D) num[i] = fmaf(r[lane + 32 * i], w, num[i]);
    }
  }
#pragma unroll
  for (int i = 0; i < NL; ++i)
    if (lane + 32 * i < D) part[warp][lane + 32 * i] = num[i];
  if (lane == 0) part[warp][D] = den;
  __syncthreads();
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float n = 0.0f, l = 0.0f;
#pragma unroll
    for (int w = 0; w < kCombineWarps; ++w) {
      n += part[w][d];
      l += part[w][D];
    }
    out[blockIdx.x * int64_t(D) + d] = from_f<T>(n / l);
  }
}

}  // namespace

int64_t gqa_decode_num_splits(int64_t batch, int64_t num_kv_heads, int64_t max_seq) {
  // Enough blocks to fill a large GPU (132 SMs) four times over, but no split with fewer than
  // 64 keys of the cache.
  const int64_t want = (528 + batch * num_kv_heads - 1) / (batch * num_kv_heads);
  const int64_t most = (max_seq + 63) / 64;
  const int64_t s = want < most ? want : most;
  return s > 0 ? s : 1;
}

int64_t gqa_decode_workspace_floats(int64_t batch, int64_t num_q_heads, int64_t head_dim,
                                    int64_t num_splits) {
  return batch * num_q_heads * num_splits * (head_dim + 2);
}

void gqa_decode_attention_rows(DType dtype, void* out, const void* q, int64_t q_stride, const void* k_cache,
                               const void* v_cache, const int64_t* cache_rows, const int32_t* seq_lens,
                               int64_t batch, int64_t num_q_heads, int64_t num_kv_heads, int64_t max_seq,
                               int64_t head_dim, float scale, int64_t num_splits, float* workspace,
                               cudaStream_t stream) {
  if (batch == 0) return;
  for (auto [p, name] : {std::pair{k_cache, "k_cache"}, {v_cache, "v_cache"}})
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
      throw std::invalid_argument(std::string("gqa_decode_attention: ") + name + " must be 16-byte aligned");
  const int64_t group = num_q_heads / num_kv_heads;
  const int G = group >= 8 ? 8 : (group > 1 ? 4 : 1);  // query heads per block
  const int tiles = static_cast<int>((group + G - 1) / G);
  // num_splits sizes the workspace; fewer are used when more blocks than the GPU holds at once
  // would run as a second, mostly idle wave (every split gets the same share of the keys).
  int64_t splits = num_splits;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto launch = [&](auto d, auto g) {
      constexpr auto kernel = decode_split_kernel<T, decltype(d)::value, decltype(g)::value>;
      const int device = current_device();
      const int64_t resident = static_cast<int64_t>(sm_count(device)) * blocks_per_sm<kernel, kWarps * 32>(device);
      if (resident > 0) splits = std::max<int64_t>(1, std::min(num_splits, resident / (batch * num_kv_heads * tiles)));
      const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(num_kv_heads * tiles),
                      static_cast<unsigned>(batch));
      kernel<<<grid, kWarps * 32, 0, stream>>>(
          workspace, static_cast<const T*>(q), q_stride, static_cast<const T*>(k_cache),
          static_cast<const T*>(v_cache), cache_rows, seq_lens, num_q_heads, num_kv_heads, max_seq, scale, tiles);
      decode_combine_kernel<T, decltype(d)::value>
          <<<static_cast<unsigned>(batch * num_q_heads), kCombineWarps * 32, 0, stream>>>(static_cast<T*>(out),
                                                                                          workspace, splits);
    };
    const auto with_g = [&](auto d) {
      if (G == 8)
        launch(d, std::integral_constant<int, 8>{});
      else if (G == 4)
        launch(d, std::integral_constant<int, 4>{});
      else
        launch(d, std::integral_constant<int, 1>{});
    };
    switch (head_dim) {
#define PYRUNTIME_HEAD_DIM_CASE(D)               \
  case D:                                        \
    with_g(std::integral_constant<int, D>{});    \
    break;
      PYRUNTIME_FOR_EACH_HEAD_DIM(PYRUNTIME_HEAD_DIM_CASE)
#undef PYRUNTIME_HEAD_DIM_CASE
      default:
        throw std::invalid_argument("gqa_decode_attention: unsupported head size " +
                                    std::to_string(head_dim) + " (supported: " PYRUNTIME_HEAD_DIMS_STR ")");
    }
  });
  check_launch("gqa_decode_attention");
}

void gqa_decode_attention(DType dtype, void* out, const void* q, const void* k_cache,
                          const void* v_cache, const int32_t* seq_lens, int64_t batch,
                          int64_t num_q_heads, int64_t num_kv_heads, int64_t max_seq,
                          int64_t head_dim, float scale, int64_t num_splits, float* workspace,
                          cudaStream_t stream) {
  gqa_decode_attention_rows(dtype, out, q, num_q_heads * head_dim, k_cache, v_cache, nullptr, seq_lens, batch,
                            num_q_heads, num_kv_heads, max_seq, head_dim, scale, num_splits, workspace, stream);
}

}  // namespace pyruntime::cuda
