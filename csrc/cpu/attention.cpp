#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "attention_internal.h"
#include "linear_internal.h"
#include "isa.h"
#include "pyruntime/dispatch.h"
#include "vec.h"

namespace pyruntime::cpu::PYRUNTIME_ISA {

namespace {

constexpr int kBlock = 64;          // keys scored together (a multiple of every W)
constexpr int64_t kMinSplit = 128;  // fewer keys per split costs more in the combine than it saves

// Keys per split of a sequence of len keys: a few work items per thread for this
// sequence alone, no split shorter than kMinSplit.
inline int64_t split_len_for(int64_t len, int64_t num_kv_heads, int64_t target_items) {
  const int64_t split = ceil_div(std::max<int64_t>(1, len * num_kv_heads), target_items);
  return std::max(kMinSplit, ceil_div(split, kBlock) * kBlock);
}

// The keys query b attends, [first, end): first = first_keys[b] (a sliding window's first key;
// 0 without first_keys), end = seq_lens[b]. Its splits of split_len keys start at base, first
// rounded down to a block, so that every split but the first starts on a block (and key tile).
struct SeqKeys {
  int64_t base, first, end, split_len, splits;
};

inline SeqKeys seq_keys(const int32_t* seq_lens, const int32_t* first_keys, int64_t b, int64_t num_kv_heads,
                        int64_t target_items) {
  const int64_t first = first_keys ? first_keys[b] : 0, end = seq_lens[b];
  const int64_t base = first / kBlock * kBlock;
  const int64_t split_len = split_len_for(end - base, num_kv_heads, target_items);
  return {base, first, end, split_len, ceil_div(end - base, split_len)};
}

// One split's running state for the G query heads of a KV head, kept in the workspace:
// acc [G, D], then m [G], l [G], then scratch: scores [G, kBlock] and corrections [G].
struct SplitRecord {
  float* acc;
  float* m;
  float* l;
  float* scores;
};

inline int64_t record_floats(int64_t group, int64_t head_dim) {
  return group * (head_dim + 3 + kBlock);
}

inline SplitRecord record_at(float* base, int64_t group, int64_t head_dim) {
  return {base, base + group * head_dim, base + group * (head_dim + 1),
          base + group * (head_dim + 2)};
}

// K and V stream in with prefetch_ahead as they are read (one request per line read), which
// beats requesting the next block in a burst while its predecessor is scored.
//
// A block's keys come from kStreams places of the split read side by side: one stream per thread
// leaves DRAM idle between the hardware prefetcher's requests (side_by_side_internal.h).
constexpr int kStreams = 4;

// Where a block's keys (and their values) are: key j of the block is row
// (j / (kStreams * G)) * G + j % G of stream (j / G) % kStreams, G = 1 for rows and kTileKeys
// for key tiles (whole tiles come from one stream).
template <typename S>
struct BlockStreams {
  const S* start[kStreams];
  int64_t stride;  // elements from a row of a stream to the next (rows only: tiles are contiguous)
};

template <bool KTiled>
constexpr int kStreamKeys = KTiled ? detail::kTileKeys : 1;

template <bool KTiled, typename S>
inline const S* block_row(const BlockStreams<S>& b, int j) {
  constexpr int G = kStreamKeys<KTiled>;
  return b.start[(j / G) % kStreams] + int64_t((j / (kStreams * G)) * G + j % G) * b.stride;
}

// The block of keys [j0, j0 + kBlock) of base, one stream after another (no interleaving).
template <bool KTiled, typename S>
inline BlockStreams<S> contiguous_block(const S* base, int64_t head_dim) {
  constexpr int G = kStreamKeys<KTiled>;
  BlockStreams<S> b;
  for (int i = 0; i < kStreams; ++i) b.start[i] = base + int64_t(i) * G * head_dim;
  b.stride = KTiled ? head_dim : kStreams * head_dim;
  return b;
}

// Tiles of query heads handled together: every K or V vector loaded from L1 serves
// kHeadTile heads, and every q vector kKeyTile keys (loads, not FMAs, bound the loops).
constexpr int kHeadTile = 4;
constexpr int kKeyTile = 4;

// scores[h, j] = q[h] . k[j] for the HT heads of a tile and the kBlock keys of a block.
// \param q      [HT, D] float32 (scaled)
// \param kb     the block's key rows (float32 or bf16, converted as loaded); a tile of
//               kKeyTile keys takes a row of each stream
// \param scores [HT, kBlock], row stride kBlock
// \param ahead  request the keys further on (prefetch_ahead) meanwhile
template <int D, int HT, typename S>
inline void score_tile(const float* q, const BlockStreams<S>& kb, float* scores, bool ahead) {
  static_assert(kKeyTile == kStreams, "a key tile reads one row of each stream");
  constexpr int NV = D / W;
  for (int j0 = 0; j0 < kBlock; j0 += kKeyTile) {
    const S* rows[kKeyTile];
    for (int jj = 0; jj < kKeyTile; ++jj) {
      rows[jj] = block_row<false>(kb, j0 + jj);
      if (ahead) prefetch_ahead(rows[jj], D * int(sizeof(S)));
    }
    VecF acc[kHeadTile * kKeyTile];  // rows of heads past HT stay zero
    for (auto& a : acc) a = VecF::zero();
    for (int c = 0; c < NV; ++c) {
      VecF kv[kKeyTile];
      for (int jj = 0; jj < kKeyTile; ++jj) kv[jj] = VecF::load(rows[jj] + c * W);
      for (int h = 0; h < HT; ++h) {
        const VecF qv = VecF::load(q + h * D + c * W);
        for (int jj = 0; jj < kKeyTile; ++jj) acc[h * kKeyTile + jj] = VecF::fma(qv, kv[jj], acc[h * kKeyTile + jj]);
      }
    }
    VecF all[16];  // a copy: GCC keeps an array whose address escapes in memory
    for (int k = 0; k < 16; ++k) all[k] = acc[k];
    float sums[kHeadTile * kKeyTile];
    reduce_sum16(all, sums);
    for (int h = 0; h < HT; ++h)
      for (int jj = 0; jj < kKeyTile; ++jj) scores[h * kBlock + j0 + jj] = sums[h * kKeyTile + jj];
  }
}

// Scores of one key tile (detail::kTileKeys keys, features in rows, keys in lanes) for the HT
// heads of a tile, the tile's rows read in order (ascending addresses keep the hardware
// prefetcher on; two tiles interleaved lost a fifth from DRAM). Features d mod 4 sum apart: four
// independent chains per head in the FMA pipes. Keys in lanes: nothing to reduce.
// \param scores [HT, kBlock] at the tile's column
// \param ahead  request the tiles further on (prefetch_ahead) meanwhile, a tile row at a time
template <int D, int HT, typename S>
inline void score_key_tile(const float* q, const S* tile, float* scores, bool ahead) {
  constexpr int TK = detail::kTileKeys, KV = TK / W;  // vectors per tile row
  static_assert(TK % W == 0 && D % 4 == 0, "whole vectors per tile row, features in fours");
  VecF acc[HT][4][KV];
  for (int h = 0; h < HT; ++h)
    for (int i = 0; i < 4; ++i)
      for (int c = 0; c < KV; ++c) acc[h][i][c] = VecF::zero();
  for (int d = 0; d < D; d += 4) {
    if (ahead) prefetch_ahead(tile + d * TK, 4 * TK * int(sizeof(S)));
    VecF k[4][KV];  // features d .. d + 3 of the keys
    for (int c = 0; c < KV; ++c) {
      if constexpr (std::is_same_v<S, bf16>) {
        load_pairs(tile + d * TK + c * 2 * W, k[0][c], k[1][c]);
        load_pairs(tile + (d + 2) * TK + c * 2 * W, k[2][c], k[3][c]);
      } else {
        for (int i = 0; i < 4; ++i) k[i][c] = VecF::load(tile + (d + i) * TK + c * W);
      }
    }
    for (int h = 0; h < HT; ++h)
      for (int i = 0; i < 4; ++i) {
        const VecF qb = VecF::set1(q[h * D + d + i]);
        for (int c = 0; c < KV; ++c) acc[h][i][c] = VecF::fma(qb, k[i][c], acc[h][i][c]);
      }
  }
  for (int h = 0; h < HT; ++h)
    for (int c = 0; c < KV; ++c)
      ((acc[h][0][c] + acc[h][1][c]) + (acc[h][2][c] + acc[h][3][c])).store(scores + h * kBlock + c * W);
}

// score_tile for key tiles: the first `tiles` tiles of the block (tile t: stream t's).
template <int D, int HT, typename S>
inline void score_key_tiles(const float* q, const BlockStreams<S>& kb, float* scores, int tiles, bool ahead) {
  static_assert(kBlock == kStreams * detail::kTileKeys, "a block takes a tile of each stream");
  for (int t = 0; t < tiles; ++t) score_key_tile<D, HT>(q, kb.start[t], scores + t * detail::kTileKeys, ahead);
}

// acc[h] = acc[h] * corr[h] + sum_j p[h, j] v[j] for the HT heads of a tile.
// \param acc [HT, D] float32; p [HT, kBlock] (row stride kBlock); corr [HT]
// \param vb  the block's value rows, key j's at block_row<KTiled>(vb, j)
// \param ahead request the rows further on (prefetch_ahead) meanwhile
template <int D, int HT, bool KTiled, typename S>
inline void accumulate_tile(float* acc, const float* p, const float* corr, const BlockStreams<S>& vb, int nb,
                            bool ahead) {
  constexpr int NV = D / W;
  constexpr int CT = 4;  // vectors of the head dimension per pass
  for (int c0 = 0; c0 < NV; c0 += CT) {
    VecF o[HT][CT];
    for (int h = 0; h < HT; ++h) {
      const VecF cv = VecF::set1(corr[h]);
      for (int cc = 0; cc < CT; ++cc)
        if (c0 + cc < NV) o[h][cc] = VecF::load(acc + h * D + (c0 + cc) * W) * cv;
    }
    for (int j = 0; j < nb; ++j) {
      const S* vrow = block_row<KTiled>(vb, j);
      if (ahead && c0 == 0) prefetch_ahead(vrow, D * int(sizeof(S)));
      VecF pv[HT];
      for (int h = 0; h < HT; ++h) pv[h] = VecF::set1(p[h * kBlock + j]);
      for (int cc = 0; cc < CT; ++cc) {
        if (c0 + cc >= NV) break;
        const VecF v = VecF::load(vrow + (c0 + cc) * W);
        for (int h = 0; h < HT; ++h) o[h][cc] = VecF::fma(pv[h], v, o[h][cc]);
      }
    }
    for (int h = 0; h < HT; ++h)
      for (int cc = 0; cc < CT; ++cc)
        if (c0 + cc < NV) o[h][cc].store(acc + h * D + (c0 + cc) * W);
  }
}

// Calls f(std::integral_constant<int, HT>, g0) for each tile of up to kHeadTile heads.
template <typename F>
inline void for_head_tiles(int64_t group, F&& f) {
  int64_t g0 = 0;
  for (; g0 + kHeadTile <= group; g0 += kHeadTile) f(std::integral_constant<int, kHeadTile>{}, g0);
  switch (group - g0) {
    case 3: f(std::integral_constant<int, 3>{}, g0); break;
    case 2: f(std::integral_constant<int, 2>{}, g0); break;
    case 1: f(std::integral_constant<int, 1>{}, g0); break;
    default: break;
  }
}

// One block of keys for every query head of the group: scores, online softmax, values.
// \param kb     the block's key rows (past nb zeros when nb < kBlock), or with KTiled its key
//               tiles (only the ceil(nb / kTileKeys) that hold keys are read)
// \param vb     the block's value rows (past nb zeros when nb < kBlock)
// \param ahead  request the keys further on from memory meanwhile (the first head tile does)
// \param skip   keys [0, skip) of the block are masked out (before a sliding window; skip < nb,
//               and the block is read contiguously: key j is row j)
// \param softcap scores become softcap tanh(score / softcap) where > 0
template <int D, bool KTiled, typename SK, typename SV>
inline void attend_block(const float* qf, int64_t group, const BlockStreams<SK>& kb,
                         const BlockStreams<SV>& vb, int nb, SplitRecord rec, bool ahead, float softcap,
                         int skip = 0) {
  float* corr = rec.scores + group * kBlock;  // [G]
  for_head_tiles(group, [&](auto ht, int64_t g0) {
    constexpr int HT = decltype(ht)::value;
    if constexpr (KTiled)
      score_key_tiles<D, HT>(qf + g0 * D, kb, rec.scores + g0 * kBlock,
                             static_cast<int>(ceil_div(nb, detail::kTileKeys)), ahead && g0 == 0);
    else
      score_tile<D, HT>(qf + g0 * D, kb, rec.scores + g0 * kBlock, ahead && g0 == 0);
  });
  // Online softmax: scores become probabilities relative to the running maximum.
  for (int64_t g = 0; g < group; ++g) {
    float* s = rec.scores + g * kBlock;
    if (softcap > 0.0f)
      for (int j = 0; j < kBlock; j += W) soft_cap(VecF::load(s + j), softcap).store(s + j);
    for (int j = 0; j < skip; ++j) s[j] = kNegInf;
    for (int j = nb; j < kBlock; ++j) s[j] = kNegInf;
    VecF mx = VecF::set1(kNegInf);
    for (int j = 0; j < kBlock; j += W) mx = VecF::max(mx, VecF::load(s + j));
    const float m_new = std::max(rec.m[g], mx.reduce_max());
    corr[g] = std::exp(rec.m[g] - m_new);
    VecF sum = VecF::zero(), mv = VecF::set1(m_new);
    for (int j = 0; j < kBlock; j += W) {
      VecF p = (VecF::load(s + j) - mv).exp();
      p.store(s + j);
      sum = sum + p;
    }
    rec.l[g] = rec.l[g] * corr[g] + sum.reduce_sum();
    rec.m[g] = m_new;
  }
  for_head_tiles(group, [&](auto ht, int64_t g0) {
    accumulate_tile<D, decltype(ht)::value, KTiled>(rec.acc + g0 * D, rec.scores + g0 * kBlock, corr + g0, vb,
                                                    nb, ahead && g0 == 0);
  });
}

// Adds to rec the G query heads of one KV head attending keys [skip, len) of k/v, a block of kBlock keys
// at a time. With skip (0 < skip < kBlock, a sliding window's first key) the first block goes
// alone, its leading keys masked. Then, from a block boundary, the first kStreams * r rows (r a
// multiple of kBlock / kStreams, as many as len allows) as kStreams streams of r rows read side by
// side, a block taking kBlock / kStreams keys of each; then the rest in order. Whole blocks are
// read in place (bf16 converted as loaded, once per head tile), a last partial one through a
// zero-padded float32 copy.
// \param qf      [G, D] float32, already scaled
// \param k       [len, D] rows, or with KTiled key tiles (len's tiles); v [len, D]
// \param scratch [2, kBlock, D] float32
// \param softcap scores capped as attend_block does (0: not)
template <typename T, int D, bool KTiled>
void attend_keys(const float* qf, int64_t group, const T* k, const T* v, int64_t len,
                 SplitRecord rec, float* scratch, float softcap, int skip) {
  static_assert(D % W == 0, "head sizes are multiples of the vector width");
  // Keys [j0, j0 + nb) of k/v, contiguous; nb < kBlock through a zero-padded float32 copy of
  // the rows (key tiles are read in place).
  const auto contiguous = [&](int64_t j0, int nb, int masked) {
    if (nb == kBlock) {
      attend_block<D, KTiled>(qf, group, contiguous_block<KTiled>(k + j0 * D, D),
                              contiguous_block<KTiled>(v + j0 * D, D), nb, rec, true, softcap, masked);
      return;
    }
    const auto padded = [&](const T* src, float* dst) {
      detail::convert(dst, src + j0 * D, int64_t(nb) * D);
      std::fill(dst + int64_t(nb) * D, dst + int64_t(kBlock) * D, 0.0f);
      return contiguous_block<KTiled>(static_cast<const float*>(dst), D);
    };
    const BlockStreams<float> vb = padded(v, scratch + kBlock * D);
    if constexpr (KTiled)
      attend_block<D, true>(qf, group, contiguous_block<true>(k + j0 * D, D), vb, nb, rec, false, softcap, masked);
    else
      attend_block<D, false>(qf, group, padded(k, scratch), vb, nb, rec, false, softcap, masked);
  };
  int64_t first = 0;  // the first key of the streamed part, a block boundary
  if (skip > 0) {
    contiguous(0, static_cast<int>(std::min<int64_t>(kBlock, len)), skip);
    first = kBlock;
  }
  constexpr int kStreamRows = kBlock / kStreams;  // a whole key tile with KTiled
  const int64_t rows = std::max<int64_t>(0, len - first) / kBlock * kStreamRows;
  for (int64_t r0 = 0; r0 < rows; r0 += kStreamRows) {
    BlockStreams<T> kb, vb;
    for (int i = 0; i < kStreams; ++i) {
      kb.start[i] = k + (first + i * rows + r0) * D;
      vb.start[i] = v + (first + i * rows + r0) * D;
    }
    kb.stride = vb.stride = D;
    attend_block<D, KTiled>(qf, group, kb, vb, kBlock, rec, true, softcap);
  }
  for (int64_t j0 = first + kStreams * rows; j0 < len; j0 += kBlock)
    contiguous(j0, static_cast<int>(std::min<int64_t>(kBlock, len - j0)), 0);
}

// The G query heads of one KV head attending the keys at positions [begin + skip, end) of a head
// of `slots` slots (k_head, v_head), position p in slot p % slots: attend_keys over each run of
// the ring that does not wrap (begin and slots are multiples of kBlock where it wraps).
template <typename T, int D, bool KTiled>
void attend_split(const float* qf, int64_t group, const T* k_head, const T* v_head, int64_t slots,
                  int64_t begin, int64_t end, SplitRecord rec, float* scratch, float softcap, int skip) {
  std::fill(rec.acc, rec.acc + group * D, 0.0f);
  std::fill(rec.m, rec.m + group, kNegInf);
  std::fill(rec.l, rec.l + group, 0.0f);
  for (int64_t p = begin; p < end; skip = 0) {
    const int64_t slot = p % slots, len = std::min(end - p, slots - slot);
    attend_keys<T, D, KTiled>(qf, group, k_head + slot * D, v_head + slot * D, len, rec, scratch, softcap, skip);
    p += len;
  }
}

// Every thread of the enclosing parallel region calls this (orphaned worksharing loops).
template <typename TQ, typename TC, int D>
void decode_attention_team(TQ* out, const TQ* q, int64_t q_stride, const TC* k_cache,
                           const TC* v_cache, const int64_t* cache_rows, const int32_t* seq_lens,
                           const int32_t* first_keys, int64_t batch, int64_t num_q_heads, int64_t num_kv_heads,
                           int64_t max_seq, float scale, float softcap, const DecodePlan& plan,
                           float* workspace, bool k_tiled) {
  const int64_t group = num_q_heads / num_kv_heads;
  const int64_t rec_floats = record_floats(group, D);
  float* records = workspace;  // [batch, num_kv_heads, max_splits, record]
  const int64_t splits = plan.max_splits;
  // Per thread: two blocks of keys [2, kBlock, D], then a group of q heads [group, D].
  float* scratch_base = records + batch * num_kv_heads * splits * rec_floats;
  {
    float* scratch = scratch_base + omp_get_thread_num() * (2 * kBlock + num_q_heads) * D;
    float* qf = scratch + 2 * kBlock * D;
    // Each work item converts and scales its own group of q heads (a few hundred values):
    // no separate pass, and no barrier after one.
#pragma omp for collapse(3) schedule(dynamic, 1)
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t h = 0; h < num_kv_heads; ++h)
        for (int64_t s = 0; s < splits; ++s) {
          const SeqKeys keys = seq_keys(seq_lens, first_keys, b, num_kv_heads, plan.target_items);
          const int64_t begin = keys.base + s * keys.split_len;
          const int64_t end = std::min(keys.end, begin + keys.split_len);
          if (begin >= end) continue;
          const int skip = s == 0 ? static_cast<int>(keys.first - keys.base) : 0;
          const int64_t row = cache_rows ? cache_rows[b] : b;
          const int64_t kv_off = (row * num_kv_heads + h) * max_seq * D;
          float* rec = records + ((b * num_kv_heads + h) * splits + s) * rec_floats;
          const TQ* qg = q + b * q_stride + h * group * D;
          for (int64_t i = 0; i < group; ++i) {
            detail::convert(qf + i * D, qg + i * D, D);
            for (int d = 0; d < D; ++d) qf[i * D + d] *= scale;
          }
          if (k_tiled)
            attend_split<TC, D, true>(qf, group, k_cache + kv_off, v_cache + kv_off, max_seq, begin, end,
                                      record_at(rec, group, D), scratch, softcap, skip);
          else
            attend_split<TC, D, false>(qf, group, k_cache + kv_off, v_cache + kv_off, max_seq, begin, end,
                                       record_at(rec, group, D), scratch, softcap, skip);
        }
    // Exact combine of the splits: rescale each by exp(m_s - max m) and normalise.
#pragma omp for schedule(static)
    for (int64_t i = 0; i < batch * num_q_heads; ++i) {
      const int64_t b = i / num_q_heads, hq = i % num_q_heads;
      const int64_t h = hq / group, g = hq % group;
      const int64_t ns = seq_keys(seq_lens, first_keys, b, num_kv_heads, plan.target_items).splits;
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

DecodePlan plan_gqa_decode(const int32_t* seq_lens, int64_t batch, int64_t num_kv_heads,
                           const int32_t* first_keys) {
  const int64_t target_items = 4 * static_cast<int64_t>(omp_get_max_threads());
  int64_t most = 1;
  for (int64_t b = 0; b < batch; ++b)
    most = std::max(most, seq_keys(seq_lens, first_keys, b, num_kv_heads, target_items).splits);
  return {target_items, most, static_cast<int64_t>(omp_get_max_threads())};
}

int64_t gqa_decode_workspace_floats(const DecodePlan& plan, int64_t batch, int64_t num_q_heads,
                                    int64_t head_dim) {
  // Per KV head: max_splits records of group query heads; as many query heads in all. Per
  // thread: two blocks of keys and (at most) num_q_heads q heads.
  return plan.max_splits * batch * num_q_heads * (head_dim + 3 + kBlock) +
         plan.threads * (2 * kBlock + num_q_heads) * head_dim;
}

template <typename TQ, typename TC>
void detail::gqa_decode_attention_team(TQ* out, const TQ* q, int64_t q_stride, const TC* k_cache,
                               const TC* v_cache, const int64_t* cache_rows,
                               const int32_t* seq_lens, const int32_t* first_keys, int64_t batch,
                               int64_t num_q_heads, int64_t num_kv_heads, int64_t max_seq, int64_t head_dim,
                               float scale, float softcap, const DecodePlan& plan, float* workspace,
                               bool k_tiled) {
  switch (head_dim) {
#define PYRUNTIME_HEAD_DIM_CASE(D)                                                         \
  case D:                                                                                  \
    return decode_attention_team<TQ, TC, D>(out, q, q_stride, k_cache, v_cache, cache_rows, \
                                            seq_lens, first_keys, batch, num_q_heads, num_kv_heads,     \
                                            max_seq, scale, softcap, plan, workspace, k_tiled);
    PYRUNTIME_FOR_EACH_HEAD_DIM(PYRUNTIME_HEAD_DIM_CASE)
#undef PYRUNTIME_HEAD_DIM_CASE
    default:
      throw InvalidArgument("gqa_decode_attention: unsupported head size " +
                            std::to_string(head_dim) + " (supported: " PYRUNTIME_HEAD_DIMS_STR ")");
  }
}

template <typename T>
void gqa_decode_attention(T* out, const T* q, const T* k_cache, const T* v_cache,
                          const int32_t* seq_lens, int64_t batch, int64_t num_q_heads,
                          int64_t num_kv_heads, int64_t max_seq, int64_t head_dim, float scale,
                          const DecodePlan& plan, float* workspace) {
  if (!is_supported_head_dim(head_dim))
    throw InvalidArgument("gqa_decode_attention: unsupported head size " +
                          std::to_string(head_dim) + " (supported: " PYRUNTIME_HEAD_DIMS_STR ")");
#pragma omp parallel num_threads(static_cast<int>(plan.threads))
  detail::gqa_decode_attention_team<T, T>(out, q, num_q_heads * head_dim, k_cache, v_cache, nullptr,
                                  seq_lens, nullptr, batch, num_q_heads, num_kv_heads, max_seq, head_dim,
                                  scale, 0.0f, plan, workspace);
}

template void gqa_decode_attention<float>(float*, const float*, const float*, const float*,
                                          const int32_t*, int64_t, int64_t, int64_t, int64_t,
                                          int64_t, float, const DecodePlan&, float*);
template void gqa_decode_attention<bf16>(bf16*, const bf16*, const bf16*, const bf16*,
                                         const int32_t*, int64_t, int64_t, int64_t, int64_t,
                                         int64_t, float, const DecodePlan&, float*);

#define PYRUNTIME_INSTANTIATE_TEAM(TQ, TC)                                                  \
  template void detail::gqa_decode_attention_team<TQ, TC>(TQ*, const TQ*, int64_t, const TC*, const TC*, \
                                                  const int64_t*, const int32_t*, const int32_t*, int64_t, \
                                                  int64_t, int64_t, int64_t, int64_t, float, float, \
                                                  const DecodePlan&, float*, bool);
PYRUNTIME_INSTANTIATE_TEAM(float, float)
PYRUNTIME_INSTANTIATE_TEAM(bf16, bf16)
PYRUNTIME_INSTANTIATE_TEAM(float, bf16)
#undef PYRUNTIME_INSTANTIATE_TEAM

}  // namespace pyruntime::cpu::PYRUNTIME_ISA
