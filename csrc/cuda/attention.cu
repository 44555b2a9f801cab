#include <math_constants.h>

#include "common.cuh"
#include "pyruntime/cuda_kernels.h"
#include "pyruntime/dispatch.h"

namespace pyruntime::cuda {

namespace {

constexpr int kTile = 8;   // query heads of one KV head handled by a block
constexpr int kWarps = 4;  // warps per block, each over every kWarps-th key of the split

// Record of one (batch, query head, split): acc [D], then m, then l.
// \param records [batch, num_q_heads, num_splits, D + 2]
// Query b sits at q + b * q_stride and attends cache row cache_rows[b] (b when null).
template <typename T, int D>
__global__ void decode_split_kernel(float* records, const T* q, int64_t q_stride, const T* k_cache,
                                    const T* v_cache, const int64_t* cache_rows,
                                    const int32_t* seq_lens, int64_t num_q_heads,
                                    int64_t num_kv_heads, int64_t max_seq, float scale,
                                    int64_t split_len, int tiles) {
  constexpr int NE = (D + 31) / 32;  // head features per lane
  __shared__ float qs[kTile][D];
  __shared__ float wm[kWarps][kTile], wl[kWarps][kTile];
  __shared__ float wacc[kWarps][kTile][D];
  const int64_t b = blockIdx.z, split = blockIdx.x, num_splits = gridDim.x;
  const int64_t kvh = blockIdx.y / tiles, tile = blockIdx.y % tiles;
  const int64_t group = num_q_heads / num_kv_heads;
  const int64_t g0 = tile * kTile;
  const int ng = static_cast<int>(group - g0 < kTile ? group - g0 : kTile);
  const int64_t hq0 = kvh * group + g0;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  for (int i = threadIdx.x; i < ng * D; i += blockDim.x)
    qs[i / D][i % D] = to_f(q[b * q_stride + (hq0 + i / D) * D + i % D]) * scale;
  __syncthreads();

  float m[kTile], l[kTile], acc[kTile][NE];
#pragma unroll
  for (int g = 0; g < kTile; ++g) {
    m[g] = -CUDART_INF_F;
    l[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < NE; ++e) acc[g][e] = 0.0f;
  }
  const int64_t len = seq_lens[b];
  const int64_t begin = split * split_len;
  const int64_t end = begin + split_len < len ? begin + split_len : len;
  const int64_t row = cache_rows ? cache_rows[b] : b;
  const int64_t base = (row * num_kv_heads + kvh) * max_seq * D;
  for (int64_t j = begin + warp; j < end; j += kWarps) {
    float kf[NE], vf[NE];
#pragma unroll
    for (int e = 0; e < NE; ++e) {
      const int d = lane + 32 * e;
      kf[e] = d < D ? to_f(k_cache[base + j * D + d]) : 0.0f;
      vf[e] = d < D ? to_f(v_cache[base + j * D + d]) : 0.0f;
    }
#pragma unroll
    for (int g = 0; g < kTile; ++g) {
      if (g >= ng) break;
      float s = 0.0f;
#pragma unroll
      for (int e = 0; e < NE; ++e) {
        const int d = lane + 32 * e;
        if (d < D) s += qs[g][d] * kf[e];
      }
      s = warp_sum(s);
      const float m_new = fmaxf(m[g], s);
      const float corr = __expf(m[g] - m_new), p = __expf(s - m_new);
      l[g] = l[g] * corr + p;
      m[g] = m_new;
#pragma unroll
      for (int e = 0; e < NE; ++e) acc[g][e] = acc[g][e] * corr + p * vf[e];
    }
  }
#pragma unroll
  for (int g = 0; g < kTile; ++g) {
    if (g >= ng) break;
    if (lane == 0) {
      wm[warp][g] = m[g];
      wl[warp][g] = l[g];
    }
#pragma unroll
    for (int e = 0; e < NE; ++e)
      if (lane + 32 * e < D) wacc[warp][g][lane + 32 * e] = acc[g][e];
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

// out[b, h] = sum_s acc_s exp(m_s - M) / sum_s l_s exp(m_s - M). One block per (b, h).
template <typename T>
__global__ void decode_combine_kernel(T* out, const float* records, int64_t num_splits,
                                      int64_t head_dim) {
  const float* rec = records + blockIdx.x * num_splits * (head_dim + 2);
  float mx = -CUDART_INF_F;
  for (int64_t s = 0; s < num_splits; ++s) mx = fmaxf(mx, rec[s * (head_dim + 2) + head_dim]);
  for (int64_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float num = 0.0f, den = 0.0f;
    for (int64_t s = 0; s < num_splits; ++s) {
      const float* r = rec + s * (head_dim + 2);
      if (r[head_dim] == -CUDART_INF_F) continue;
      const float w = __expf(r[head_dim] - mx);
      num += r[d] * w;
      den += r[head_dim + 1] * w;
    }
    out[blockIdx.x * head_dim + d] = from_f<T>(num / den);
  }
}

}  // namespace

int64_t gqa_decode_num_splits(int64_t batch, int64_t num_kv_heads, int64_t max_seq) {
  // Enough blocks to fill a large GPU twice over, but no split shorter than 64 keys.
  const int64_t want = (264 + batch * num_kv_heads - 1) / (batch * num_kv_heads);
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
  const int64_t group = num_q_heads / num_kv_heads;
  const int tiles = static_cast<int>((group + kTile - 1) / kTile);
  const int64_t split_len = (max_seq + num_splits - 1) / num_splits;
  const dim3 grid(static_cast<unsigned>(num_splits), static_cast<unsigned>(num_kv_heads * tiles),
                  static_cast<unsigned>(batch));
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    switch (head_dim) {
#define PYRUNTIME_HEAD_DIM_CASE(D)                                                                  \
  case D:                                                                                           \
    decode_split_kernel<T, D><<<grid, kWarps * 32, 0, stream>>>(                                    \
        workspace, static_cast<const T*>(q), q_stride, static_cast<const T*>(k_cache),              \
        static_cast<const T*>(v_cache), cache_rows, seq_lens, num_q_heads, num_kv_heads, max_seq,   \
        scale, split_len, tiles);                                                                   \
    break;
      PYRUNTIME_FOR_EACH_HEAD_DIM(PYRUNTIME_HEAD_DIM_CASE)
#undef PYRUNTIME_HEAD_DIM_CASE
      default:
        throw std::invalid_argument("gqa_decode_attention: unsupported head size " +
                                    std::to_string(head_dim) + " (supported: " PYRUNTIME_HEAD_DIMS_STR ")");
    }
    decode_combine_kernel<T><<<static_cast<unsigned>(batch * num_q_heads), 128, 0, stream>>>(
        static_cast<T*>(out), workspace, num_splits, head_dim);
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
