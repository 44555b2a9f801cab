// The decode attention as a piece of a larger parallel region (the engine's step).
#pragma once

#include <cstdint>

#include "isa.h"
#include "vec.h"

namespace pyruntime::cpu::PYRUNTIME_ISA::detail {

// The engine's K cache layout, "key tiles" (used when max_seq is a multiple of kTileKeys):
// each head's keys in tiles of kTileKeys, a tile holding the features row by row with the tile's
// keys across each row: float32 [D][16]; bf16 [D/2][16][2], features 2i and 2i+1 of a key
// side by side, so that one 64-byte row widens into two features of 16 keys with a shift and a
// mask. Scores then come out with the keys in vector lanes: no horizontal sums, no shuffles.
// V keeps the row layout [max_seq][D] (its rows are what the values pass multiplies).
constexpr int kTileKeys = 16;
template <typename T>
inline constexpr int kTilePair = sizeof(T) == 2 ? 2 : 1;

// Offset of feature d of the key at pos, in a head's [max_seq, D] region.
template <typename T>
inline int64_t key_tile_offset(int64_t pos, int64_t d, int64_t head_dim) {
  constexpr int P = kTilePair<T>;
  return (pos / kTileKeys) * kTileKeys * head_dim + (d / P) * (kTileKeys * P) + (pos % kTileKeys) * P + d % P;
}

// Stores one key (head_dim floats) at pos of a head's tiled region.
template <typename T>
inline void store_key_tiled(T* head, int64_t pos, const float* k, int64_t head_dim) {
  for (int64_t d = 0; d < head_dim; ++d) head[key_tile_offset<T>(pos, d, head_dim)] = from_float<T>(k[d]);
}

// gqa_decode_attention, run by every thread of the enclosing OpenMP parallel region (its
// loops are orphaned worksharing loops, each ending in a barrier). Query i reads q at
// q + i * q_stride and attends keys [first_keys[i], seq_lens[i]) (from 0 when first_keys is
// null; a sliding window's first key otherwise) of cache row cache_rows[i] (row i when
// cache_rows is null), whose heads hold max_seq slots each: position p in slot p % max_seq
// (a ring on a sliding-window layer, where the window fits; a block of kBlock keys never
// wraps: a ring's slots are a multiple of it). plan: plan_gqa_decode of the same seq_lens and
// first_keys. softcap > 0:
// every score q.k * scale becomes softcap tanh(score / softcap) (Gemma 2); 0: left as it is.
// head_dim must be supported (checked by the caller: this is inside a parallel region).
// k_tiled: k_cache holds key tiles (max_seq a multiple of kTileKeys), else rows.
template <typename TQ, typename TC>
void gqa_decode_attention_team(TQ* out, const TQ* q, int64_t q_stride, const TC* k_cache,
                               const TC* v_cache, const int64_t* cache_rows,
                               const int32_t* seq_lens, const int32_t* first_keys, int64_t batch,
                               int64_t num_q_heads, int64_t num_kv_heads, int64_t max_seq, int64_t head_dim,
                               float scale, float softcap, const DecodePlan& plan, float* workspace,
                               bool k_tiled = false);

// prefill_attention, run by every thread of the enclosing OpenMP parallel region (one
// orphaned worksharing loop, ending in a barrier). Token t of the chunk sits at position
// start_pos + t; q of token t at q + t * q_stride, its output at out + t * out_stride. It
// attends keys [0, pos], or [pos + 1 - window, pos] with a window > 0 (sliding window); scores
// soft-capped as gqa_decode_attention_team's where softcap > 0.
// \param k_cache, v_cache the sequence's [num_kv_heads, max_seq, head_dim], position p in slot
//        p % max_seq as gqa_decode_attention_team's
// \param workspace prefill_attention_workspace_floats(threads of the region, ...) floats
// \param k_tiled   k_cache holds key tiles, else rows
template <typename TQ, typename TC>
void prefill_attention_team(TQ* out, int64_t out_stride, const TQ* q, int64_t q_stride,
                            const TC* k_cache, const TC* v_cache, int64_t tokens, int64_t start_pos,
                            int64_t num_q_heads, int64_t num_kv_heads, int64_t max_seq,
                            int64_t head_dim, float scale, int64_t window, float softcap, float* workspace,
                            bool k_tiled = false);

}  // namespace pyruntime::cpu::PYRUNTIME_ISA::detail
