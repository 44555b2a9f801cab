#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "linear_internal.h"
#include "pyruntime/cpu_kernels.h"
#include "pyruntime/dispatch.h"
#include "pyruntime/vec.h"

namespace pyruntime::cpu {

namespace {

constexpr int W = VecF::W;
constexpr int kBlock = 16;        // keys scored together (a multiple of every W)
constexpr int kPrefetchBlocks = 2;   // blocks of keys requested ahead of the one in use
constexpr int64_t kMinSplit = 128;  // fewer keys per split costs more in the combine than it saves
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Keys per split of a sequence of len keys: a few work items per thread for this
// sequence alone, no split shorter than kMinSplit.
inline int64_t split_len_for(int64_t len, int64_t num_kv_heads, int64_t target_items) {
  const int64_t split = ceil_div(std::max<int64_t>(1, len * num_kv_heads), target_items);
  return std::max(kMinSplit, ceil_div(split, kBlock) * kBlock);
}

// One split's running state for the G query heads of a KV head, kept in the workspace:
// acc [G, D], then m [G], l [G], then scratch scores [G, kBlock].
struct SplitRecord {
  float* acc;
  float* m;
  float* l;
  float* scores;
};

inline int64_t record_floats(int64_t group, int64_t head_dim) {
  return group * (head_dim + 2 + kBlock);
}

inline SplitRecord record_at(float* base, int64_t group, int64_t head_dim) {
  return {base, base + group * head_dim, base + group * (head_dim + 1),
          base + group * (head_dim + 2)};
}

// Asks for keys [j0, j0 + kBlock) of k and v ahead of use: one core alone cannot keep
// enough cache misses in flight to reach the memory bandwidth without it.
template <typename T, int D>
inline void prefetch_block(const T* k, const T* v, int64_t j0, int64_t len) {
  if (j0 >= len) return;
  const int64_t end = std::min<int64_t>(len, j0 + kBlock) * D * sizeof(T);
  const char* kp = reinterpret_cast<const char*>(k);
  const char* vp = reinterpret_cast<const char*>(v);
  for (int64_t off = j0 * D * static_cast<int64_t>(sizeof(T)); off < end; off += 64) {
    __builtin_prefetch(kp + off, 0, 3);
    __builtin_prefetch(vp + off, 0, 3);
  }
}

// Copies keys [j0, j0 + nb) of src into a float32 block [kBlock, D], zero-filling the rest.
template <typename T, int D>
inline const float* block_f32(const T* src, int64_t j0, int nb, float* scratch) {
  if constexpr (std::is_same_v<T, float>) {
    if (nb == kBlock) return src + j0 * D;  // already float32 and whole: read in place
  }
  detail::convert_to_f32(scratch, src + j0 * D, int64_t(nb) * D);
  std::fill(scratch + int64_t(nb) * D, scratch + int64_t(kBlock) * D, 0.0f);
  return scratch;
}

// Attends the G query heads of one KV head to keys [0, len) of k/v. Keys go in blocks of
// kBlock: each block is converted to float32 once, then read from L1 by every head.
// \param qf      [G, D] float32, already scaled
// \param k       [len, D], v [len, D]
// \param scratch [2, kBlock, D] float32
template <typename T, int D>
void attend_split(const float* qf, int64_t group, const T* k, const T* v, int64_t len,
                  SplitRecord rec, float* scratch) {
  constexpr int NV = (D + W - 1) / W;  // vectors per head row
  constexpr int kTail = D - (NV - 1) * W;
  std::fill(rec.acc, rec.acc + group * D, 0.0f);
  std::fill(rec.m, rec.m + group, kNegInf);
  std::fill(rec.l, rec.l + group, 0.0f);
  for (int64_t j0 = 0; j0 < len; j0 += kBlock) {
    const int nb = static_cast<int>(std::min<int64_t>(kBlock, len - j0));
    prefetch_block<T, D>(k, v, j0 + kPrefetchBlocks * kBlock, len);
    const float* kb = block_f32<T, D>(k, j0, nb, scratch);
    const float* vb = block_f32<T, D>(v, j0, nb, scratch + kBlock * D);
    for (int64_t g = 0; g < group; ++g) {
      // Scores of the block: one accumulator per key, one q vector at a time.
      const float* qg = qf + g * D;
      float* s = rec.scores + g * kBlock;
      VecF acc[kBlock];
      for (auto& a : acc) a = VecF::zero();
      for (int c = 0; c < NV; ++c) {
        const int n = c == NV - 1 ? kTail : W;
        const VecF qv = load_n(qg + c * W, n);
        for (int j = 0; j < kBlock; ++j) acc[j] = VecF::fma(qv, load_n(kb + j * D + c * W, n), acc[j]);
      }
      reduce_sum16(acc, s);
      for (int j = nb; j < kBlock; ++j) s[j] = kNegInf;
      // Online softmax over the block.
      VecF mx = VecF::set1(kNegInf);
      for (int j = 0; j < kBlock; j += W) mx = VecF::max(mx, VecF::load(s + j));
      const float m_new = std::max(rec.m[g], mx.reduce_max());
      const float corr = std::exp(rec.m[g] - m_new);
      VecF sum = VecF::zero(), mv = VecF::set1(m_new);
      for (int j = 0; j < kBlock; j += W) {
        VecF p = (VecF::load(s + j) - mv).exp();
        p.store(s + j);
        sum = sum + p;
      }
      rec.l[g] = rec.l[g] * corr + sum.reduce_sum();
      rec.m[g] = m_new;
      // acc = acc * corr + sum_j p_j v_j, the head's accumulator held in registers.
      float* ag = rec.acc + g * D;
      VecF o[NV];
      const VecF cv = VecF::set1(corr);
      for (int c = 0; c < NV; ++c) o[c] = load_n(ag + c * W, c == NV - 1 ? kTail : W) * cv;
      for (int j = 0; j < nb; ++j) {
        const VecF p = VecF::set1(s[j]);
        for (int c = 0; c < NV; ++c) o[c] = VecF::fma(p, load_n(vb + j * D + c * W, c == NV - 1 ? kTail : W), o[c]);
      }
      for (int c = 0; c < NV; ++c) store_n(o[c], ag + c * W, c == NV - 1 ? kTail : W);
    }
  }
}

template <typename T, int D>
void decode_attention_impl(T* out, const T* q, const T* k_cache, const T* v_cache,
                           const int32_t* seq_lens, int64_t batch, int64_t num_q_heads,
                           int64_t num_kv_heads, int64_t max_seq, float scale,
                           const DecodePlan& plan, float* workspace) {
  const int64_t group = num_q_heads / num_kv_heads;
  const int64_t rec_floats = record_floats(group, D);
  float* qf = workspace;  // [batch, num_q_heads, D]
  float* records = qf + batch * num_q_heads * D;  // [batch, num_kv_heads, max_splits, record]
  const int64_t splits = plan.max_splits;
  float* scratch_base = records + batch * num_kv_heads * splits * rec_floats;  // [threads, 2, kBlock, D]
#pragma omp parallel num_threads(static_cast<int>(plan.threads))
  {
    float* scratch = scratch_base + omp_get_thread_num() * 2 * kBlock * D;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < batch * num_q_heads; ++i) {
      detail::convert_to_f32(qf + i * D, q + i * D, D);
      for (int d = 0; d < D; ++d) qf[i * D + d] *= scale;
    }
#pragma omp for collapse(3) schedule(dynamic, 1)
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t h = 0; h < num_kv_heads; ++h)
        for (int64_t s = 0; s < splits; ++s) {
          const int64_t split_len = split_len_for(seq_lens[b], num_kv_heads, plan.target_items);
          const int64_t begin = s * split_len;
          const int64_t end = std::min<int64_t>(seq_lens[b], begin + split_len);
          if (begin >= end) continue;
          const int64_t kv_off = ((b * num_kv_heads + h) * max_seq + begin) * D;
          float* rec = records + ((b * num_kv_heads + h) * splits + s) * rec_floats;
          attend_split<T, D>(qf + (b * num_q_heads + h * group) * D, group, k_cache + kv_off,
                             v_cache + kv_off, end - begin, record_at(rec, group, D), scratch);
        }
    // Exact combine of the splits: rescale each by exp(m_s - max m) and normalise.
#pragma omp for schedule(static)
    for (int64_t i = 0; i < batch * num_q_heads; ++i) {
      const int64_t b = i / num_q_heads, hq = i % num_q_heads;
      const int64_t h = hq / group, g = hq % group;
      const int64_t ns =
          ceil_div(seq_lens[b], split_len_for(seq_lens[b], num_kv_heads, plan.target_items));
      float* base = records + (b * num_kv_heads + h) * splits * rec_floats;
      float m_max = kNegInf;
      for (int64_t s = 0; s < ns; ++s) m_max = std::max(m_max, record_at(base + s * rec_floats, group, D).m[g]);
      float denom = 0.0f;
      VecF acc[(D + W - 1) / W];
      for (auto& a : acc) a = VecF::zero();
      for (int64_t s = 0; s < ns; ++s) {
        SplitRecord r = record_at(base + s * rec_floats, group, D);
        const float w = std::exp(r.m[g] - m_max);
        denom += r.l[g] * w;
        const VecF wv = VecF::set1(w);
        for (int c = 0; c * W < D; ++c) {
          const int n = std::min(W, D - c * W);
          acc[c] = VecF::fma(wv, load_n(r.acc + g * D + c * W, n), acc[c]);
        }
      }
      const VecF inv = VecF::set1(1.0f / denom);
      for (int c = 0; c * W < D; ++c) store_n(acc[c] * inv, out + i * D + c * W, std::min(W, D - c * W));
    }
  }
}

}  // namespace

DecodePlan plan_gqa_decode(const int32_t* seq_lens, int64_t batch, int64_t num_kv_heads) {
  const int64_t target_items = 4 * static_cast<int64_t>(omp_get_max_threads());
  int64_t most = 1;
  for (int64_t b = 0; b < batch; ++b)
    most = std::max(most, ceil_div(seq_lens[b], split_len_for(seq_lens[b], num_kv_heads, target_items)));
  return {target_items, most, static_cast<int64_t>(omp_get_max_threads())};
}

int64_t gqa_decode_workspace_floats(const DecodePlan& plan, int64_t batch, int64_t num_q_heads,
                                    int64_t head_dim) {
  // Per KV head: max_splits records of group query heads; as many query heads in all.
  return batch * num_q_heads * head_dim +
         plan.max_splits * batch * num_q_heads * (head_dim + 2 + kBlock) +
         plan.threads * 2 * kBlock * head_dim;
}

template <typename T>
void gqa_decode_attention(T* out, const T* q, const T* k_cache, const T* v_cache,
                          const int32_t* seq_lens, int64_t batch, int64_t num_q_heads,
                          int64_t num_kv_heads, int64_t max_seq, int64_t head_dim, float scale,
                          const DecodePlan& plan, float* workspace) {
  switch (head_dim) {
#define PYRUNTIME_HEAD_DIM_CASE(D)                                                            \
  case D:                                                                                     \
    return decode_attention_impl<T, D>(out, q, k_cache, v_cache, seq_lens, batch, num_q_heads, \
                                       num_kv_heads, max_seq, scale, plan, workspace);
    PYRUNTIME_FOR_EACH_HEAD_DIM(PYRUNTIME_HEAD_DIM_CASE)
#undef PYRUNTIME_HEAD_DIM_CASE
    default:
      throw InvalidArgument("gqa_decode_attention: unsupported head size " +
                            std::to_string(head_dim) + " (supported: " PYRUNTIME_HEAD_DIMS_STR ")");
  }
}

template void gqa_decode_attention<float>(float*, const float*, const float*, const float*,
                                          const int32_t*, int64_t, int64_t, int64_t, int64_t,
                                          int64_t, float, const DecodePlan&, float*);
template void gqa_decode_attention<bf16>(bf16*, const bf16*, const bf16*, const bf16*,
                                         const int32_t*, int64_t, int64_t, int64_t, int64_t,
                                         int64_t, float, const DecodePlan&, float*);

}  // namespace pyruntime::cpu
