// Causal attention of a chunk of prompt tokens against one sequence's KV cache (prefill),
// flash-attention style: a block of query tokens (all the query heads of one KV head) meets
// the keys a block at a time, so every key and value is read once per query block instead of
// once per token. Scores are an outer-product GEMM against the key block transposed into a
// float32 panel; probabilities times values another, against the value block in float32.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>

#include "attention_internal.h"
#include "linear_internal.h"
#include "isa.h"
#include "pyruntime/dispatch.h"
#include "vec.h"

namespace pyruntime::cpu::PYRUNTIME_ISA {

namespace {

constexpr int64_t kQueryTokens = 32;  // query tokens per work item
constexpr int kKeys = 64;             // keys per block (a multiple of every W)
constexpr int kKeyVecs = kKeys / W;
constexpr int kKeyVecTile = kKeyVecs < 4 ? kKeyVecs : 4;  // key vectors per register tile
constexpr int kRowTile = W == 16 ? 4 : 2;             // query rows per register tile

// Per-thread scratch, in floats: Q [M, D], O [M, D], S [M, kKeys], K^T [D, kKeys],
// V [kKeys, D], m [M], l [M], corrections [M], with M = kQueryTokens * group rows.
int64_t scratch_floats(int64_t group, int64_t head_dim) {
  const int64_t m = kQueryTokens * group;
  return 2 * m * head_dim + m * kKeys + 2 * int64_t(kKeys) * head_dim + 3 * m;
}

// s[i, :] = q[i] . kt[:, j] for RT rows i and the kKeys keys of the block.
template <int D, int RT>
inline void score_rows(float* s, const float* q, const float* kt) {
  for (int j0 = 0; j0 < kKeyVecs; j0 += kKeyVecTile) {
    VecF acc[RT][kKeyVecTile];
    for (auto& row : acc)
      for (auto& a : row) a = VecF::zero();
    for (int d = 0; d < D; ++d) {
      VecF k[kKeyVecTile];
      for (int jj = 0; jj < kKeyVecTile; ++jj) k[jj] = VecF::load(kt + d * kKeys + (j0 + jj) * W);
      for (int r = 0; r < RT; ++r) {
        const VecF qb = VecF::set1(q[r * D + d]);
        for (int jj = 0; jj < kKeyVecTile; ++jj) acc[r][jj] = VecF::fma(qb, k[jj], acc[r][jj]);
      }
    }
    for (int r = 0; r < RT; ++r)
      for (int jj = 0; jj < kKeyVecTile; ++jj) acc[r][jj].store(s + r * kKeys + (j0 + jj) * W);
  }
}

// o[i, :] = o[i, :] * corr[i] + sum_j p[i, j] v[j, :] for RT rows i over nb keys.
template <int D, int RT>
inline void accumulate_rows(float* o, const float* p, const float* corr, const float* v, int nb) {
  constexpr int NV = D / W;
  constexpr int CT = NV < 4 ? NV : 4;  // vectors of the head dimension per pass
  for (int c0 = 0; c0 < NV; c0 += CT) {
    const int ct = NV - c0 < CT ? NV - c0 : CT;
    VecF acc[RT][CT];
    for (int r = 0; r < RT; ++r) {
      const VecF cv = VecF::set1(corr[r]);
      for (int cc = 0; cc < CT; ++cc)
        if (cc < ct) acc[r][cc] = VecF::load(o + r * D + (c0 + cc) * W) * cv;
    }
    for (int j = 0; j < nb; ++j) {
      VecF vv[CT];
      for (int cc = 0; cc < CT; ++cc)
        if (cc < ct) vv[cc] = VecF::load(v + j * D + (c0 + cc) * W);
      for (int r = 0; r < RT; ++r) {
        const VecF pb = VecF::set1(p[r * kKeys + j]);
        for (int cc = 0; cc < CT; ++cc)
          if (cc < ct) acc[r][cc] = VecF::fma(pb, vv[cc], acc[r][cc]);
      }
    }
    for (int r = 0; r < RT; ++r)
      for (int cc = 0; cc < CT; ++cc)
        if (cc < ct) acc[r][cc].store(o + r * D + (c0 + cc) * W);
  }
}

// f(std::integral_constant<int, RT>, i0) over rows [0, m) in tiles of kRowTile, then singles.
template <typename F>
inline void for_row_tiles(int64_t m, F&& f) {
  int64_t i = 0;
  for (; i + kRowTile <= m; i += kRowTile) f(std::integral_constant<int, kRowTile>{}, i);
  for (; i < m; ++i) f(std::integral_constant<int, 1>{}, i);
}

// The K^T panel [D, kKeys] (keys past nb zero) of the nb keys at k from key tiles: each tile
// row (bf16: pair of rows) is already features x keys.
template <typename TC, int D>
inline void key_panel_from_tiles(float* kt, const TC* k, int nb) {
  constexpr int TK = detail::kTileKeys;
  for (int jt = 0; jt < kKeys; jt += TK) {
    const TC* tile = k + jt * D;
    for (int d = 0; d < D; d += 2)
      for (int c = 0; c < TK; c += W) {
        float* r0 = kt + d * kKeys + jt + c;
        float* r1 = r0 + kKeys;
        if (jt >= nb) {  // no keys here (the tile may lie past max_seq): not read
          VecF::zero().store(r0);
          VecF::zero().store(r1);
          continue;
        }
        VecF a, b;
        if constexpr (std::is_same_v<TC, bf16>) {
          load_pairs(tile + d * TK + 2 * c, a, b);
        } else {
          a = VecF::load(tile + d * TK + c);
          b = VecF::load(tile + (d + 1) * TK + c);
        }
        a.store(r0);
        b.store(r1);
      }
  }
  for (int d = 0; d < D; ++d) std::fill(kt + d * kKeys + nb, kt + (d + 1) * kKeys, 0.0f);  // stale keys
}

// One work item: query tokens [t0, t1) of the chunk, the query heads of KV head h; K in key
// tiles (KTiled) or rows, position p in slot p % slots (a block of kKeys never wraps). With a
// window, the token at pos sees keys [pos + 1 - window, pos].
template <typename TQ, typename TC, int D, bool KTiled>
void attend_query_block(TQ* out, int64_t out_stride, const TQ* q, int64_t q_stride, const TC* k_head,
                        const TC* v_head, int64_t slots, int64_t t0, int64_t t1, int64_t start_pos, int64_t h,
                        int64_t group, float scale, int64_t window, float softcap, float* scratch) {
  const int64_t m = (t1 - t0) * group;  // rows: token-major, then the group's heads
  float* qs = scratch;
  float* o = qs + kQueryTokens * group * D;
  float* s = o + kQueryTokens * group * D;
  float* kt = s + kQueryTokens * group * kKeys;
  float* vf = kt + int64_t(kKeys) * D;
  float* mx = vf + int64_t(kKeys) * D;
  float* l = mx + kQueryTokens * group;
  float* corr = l + kQueryTokens * group;
  for (int64_t i = 0; i < m; ++i) {
    const int64_t t = t0 + i / group, hq = h * group + i % group;
    detail::convert(qs + i * D, q + t * q_stride + hq * D, D);
    for (int d = 0; d < D; ++d) qs[i * D + d] *= scale;
  }
  std::fill(o, o + m * D, 0.0f);
  std::fill(mx, mx + m, kNegInf);
  std::fill(l, l + m, 0.0f);
  const int64_t end = start_pos + t1;  // keys [0, end) are seen by the block's last token
  // The first token's window starts the keys, from a block boundary (key tiles stay whole).
  const int64_t lo = window > 0 ? std::max<int64_t>(0, start_pos + t0 + 1 - window) : 0;
  for (int64_t j0 = lo / kKeys * kKeys; j0 < end; j0 += kKeys) {
    const int nb = static_cast<int>(std::min<int64_t>(kKeys, end - j0));
    // The block's keys and values: positions j0 .. j0 + nb in consecutive slots.
    const TC* k = k_head + j0 % slots * D;
    const TC* v = v_head + j0 % slots * D;
    // K^T panel and V block in float32; keys past nb are zero.
    if constexpr (KTiled) {
      key_panel_from_tiles<TC, D>(kt, k, nb);
    } else {
#if defined(PYRUNTIME_VEC_AVX512)
    static_assert(kKeys % W == 0, "whole 16 x 16 tiles");
    for (int d0 = 0; d0 < D; d0 += W)
      for (int jt = 0; jt < kKeys; jt += W) {  // a tile of W keys x W features, transposed
        VecF tile[W];
        for (int j = 0; j < W; ++j) tile[j] = jt + j < nb ? VecF::load(k + (jt + j) * D + d0) : VecF::zero();
        transpose16(tile);
        for (int dd = 0; dd < W; ++dd) tile[dd].store(kt + (d0 + dd) * kKeys + jt);
      }
#else
    alignas(64) float tmp[kKeys];
    for (int d0 = 0; d0 < D; d0 += W) {
      for (int j = 0; j < nb; ++j) {
        const VecF kv = VecF::load(k + j * D + d0);
        kv.store(tmp);  // one key's W features, scattered into W rows of the panel
        for (int dd = 0; dd < W; ++dd) kt[(d0 + dd) * kKeys + j] = tmp[dd];
      }
      for (int dd = 0; dd < W; ++dd) std::fill(kt + (d0 + dd) * kKeys + nb, kt + (d0 + dd + 1) * kKeys, 0.0f);
    }
#endif
    }
    detail::convert(vf, v, int64_t(nb) * D);
    for_row_tiles(m, [&](auto rt, int64_t i0) { score_rows<D, decltype(rt)::value>(s + i0 * kKeys, qs + i0 * D, kt); });
    // Causal (and window) mask and online softmax, row by row.
    for (int64_t i = 0; i < m; ++i) {
      float* si = s + i * kKeys;
      const int64_t pos = start_pos + t0 + i / group;
      if (softcap > 0.0f)
        for (int j = 0; j < kKeys; j += W) soft_cap(VecF::load(si + j), softcap).store(si + j);
      const int valid = static_cast<int>(std::clamp<int64_t>(pos + 1 - j0, 0, nb));
      for (int j = valid; j < kKeys; ++j) si[j] = kNegInf;
      if (window > 0) {
        const int before = static_cast<int>(std::clamp<int64_t>(pos + 1 - window - j0, 0, kKeys));
        for (int j = 0; j < before; ++j) si[j] = kNegInf;
      }
      VecF vmax = VecF::set1(kNegInf);
      for (int j = 0; j < kKeys; j += W) vmax = VecF::max(vmax, VecF::load(si + j));
      // Without a window every row's first block holds key 0, so m_new is finite from then on;
      // with one, a later row's window may start past this block: it adds nothing yet.
      const float m_new = std::max(mx[i], vmax.reduce_max());
      if (m_new == kNegInf) {
        corr[i] = 1.0f;
        std::fill(si, si + kKeys, 0.0f);
        continue;
      }
      corr[i] = std::exp(mx[i] - m_new);
      VecF sum = VecF::zero();
      const VecF mv = VecF::set1(m_new);
      for (int j = 0; j < kKeys; j += W) {
        const VecF p = (VecF::load(si + j) - mv).exp();
        p.store(si + j);
        sum = sum + p;
      }
      l[i] = l[i] * corr[i] + sum.reduce_sum();
      mx[i] = m_new;
    }
    for_row_tiles(m, [&](auto rt, int64_t i0) {
      accumulate_rows<D, decltype(rt)::value>(o + i0 * D, s + i0 * kKeys, corr + i0, vf, nb);
    });
  }
  for (int64_t i = 0; i < m; ++i) {
    const int64_t t = t0 + i / group, hq = h * group + i % group;
    const VecF inv = VecF::set1(1.0f / l[i]);
    for (int d = 0; d < D; d += W) store_n(VecF::load(o + i * D + d) * inv, out + t * out_stride + hq * D + d, W);
  }
}

template <typename TQ, typename TC, int D>
void prefill_team(TQ* out, int64_t out_stride, const TQ* q, int64_t q_stride, const TC* k_cache,
                  const TC* v_cache, int64_t tokens, int64_t start_pos, int64_t num_q_heads,
                  int64_t num_kv_heads, int64_t max_seq, float scale, int64_t window, float softcap,
                  float* workspace, bool k_tiled) {
  const int64_t group = num_q_heads / num_kv_heads;
  const int64_t blocks = ceil_div(tokens, kQueryTokens);
  float* scratch = workspace + omp_get_thread_num() * scratch_floats(group, D);
  // The last query blocks see the most keys: hand them out first.
#pragma omp for collapse(2) schedule(dynamic, 1)
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t h = 0; h < num_kv_heads; ++h) {
      const int64_t qb = blocks - 1 - b;
      const int64_t t0 = qb * kQueryTokens, t1 = std::min(tokens, t0 + kQueryTokens);
      const int64_t kv = h * max_seq * D;
      const auto attend = k_tiled ? attend_query_block<TQ, TC, D, true> : attend_query_block<TQ, TC, D, false>;
      attend(out, out_stride, q, q_stride, k_cache + kv, v_cache + kv, max_seq, t0, t1, start_pos, h, group, scale,
             window, softcap, scratch);
    }
}

}  // namespace

int64_t prefill_attention_workspace_floats(int64_t threads, int64_t num_q_heads, int64_t num_kv_heads,
                                           int64_t head_dim) {
  return threads * scratch_floats(num_q_heads / num_kv_heads, head_dim);
}

template <typename TQ, typename TC>
void detail::prefill_attention_team(TQ* out, int64_t out_stride, const TQ* q, int64_t q_stride,
                                    const TC* k_cache, const TC* v_cache, int64_t tokens,
                                    int64_t start_pos, int64_t num_q_heads, int64_t num_kv_heads,
                                    int64_t max_seq, int64_t head_dim, float scale, int64_t window,
                                    float softcap, float* workspace, bool k_tiled) {
  switch (head_dim) {
#define PYRUNTIME_HEAD_DIM_CASE(D)                                                                   \
  case D:                                                                                            \
    return prefill_team<TQ, TC, D>(out, out_stride, q, q_stride, k_cache, v_cache, tokens, start_pos, \
                                   num_q_heads, num_kv_heads, max_seq, scale, window, softcap, workspace, k_tiled);
    PYRUNTIME_FOR_EACH_HEAD_DIM(PYRUNTIME_HEAD_DIM_CASE)
#undef PYRUNTIME_HEAD_DIM_CASE
    default:
      return;  // checked by the callers, outside the parallel region
  }
}

template <typename T>
void prefill_attention(T* out, const T* q, const T* k_cache, const T* v_cache, int64_t tokens,
                       int64_t start_pos, int64_t num_q_heads, int64_t num_kv_heads, int64_t max_seq,
                       int64_t head_dim, float scale, int64_t threads, float* workspace) {
  PYRUNTIME_CHECK(is_supported_head_dim(head_dim), "prefill_attention: unsupported head size " +
                                                       std::to_string(head_dim) +
                                                       " (supported: " PYRUNTIME_HEAD_DIMS_STR ")");
  PYRUNTIME_CHECK(num_kv_heads > 0 && num_q_heads % num_kv_heads == 0,
                  "prefill_attention: num_q_heads must be a multiple of num_kv_heads");
  PYRUNTIME_CHECK(tokens >= 1 && start_pos >= 0 && start_pos + tokens <= max_seq,
                  "prefill_attention: start_pos + tokens must lie within max_seq");
  PYRUNTIME_CHECK(threads >= 1, "prefill_attention: threads must be positive");
  const int64_t row = num_q_heads * head_dim;
#pragma omp parallel num_threads(static_cast<int>(threads))
  detail::prefill_attention_team<T, T>(out, row, q, row, k_cache, v_cache, tokens, start_pos, num_q_heads,
                                       num_kv_heads, max_seq, head_dim, scale, 0, 0.0f, workspace);
}

template void prefill_attention<float>(float*, const float*, const float*, const float*, int64_t, int64_t,
                                       int64_t, int64_t, int64_t, int64_t, float, int64_t, float*);
template void prefill_attention<bf16>(bf16*, const bf16*, const bf16*, const bf16*, int64_t, int64_t, int64_t,
                                      int64_t, int64_t, int64_t, float, int64_t, float*);

#define PYRUNTIME_INSTANTIATE_TEAM(TQ, TC)                                                           \
  template void detail::prefill_attention_team<TQ, TC>(TQ*, int64_t, const TQ*, int64_t, const TC*, \
                                                       const TC*, int64_t, int64_t, int64_t, int64_t, \
                                                       int64_t, int64_t, float, int64_t, float, float*, bool);
PYRUNTIME_INSTANTIATE_TEAM(float, float)
PYRUNTIME_INSTANTIATE_TEAM(bf16, bf16)
PYRUNTIME_INSTANTIATE_TEAM(float, bf16)
#undef PYRUNTIME_INSTANTIATE_TEAM

}  // namespace pyruntime::cpu::PYRUNTIME_ISA
