// The decode attention as a piece of a larger parallel region (the engine's step).
#pragma once

#include <cstdint>

#include "pyruntime/cpu_kernels.h"

namespace pyruntime::cpu::detail {

// gqa_decode_attention, run by every thread of the enclosing OpenMP parallel region (its
// loops are orphaned worksharing loops, each ending in a barrier). Query i reads q at
// q + i * q_stride and attends cache row cache_rows[i] (row i when cache_rows is null).
// head_dim must be supported (checked by the caller: this is inside a parallel region).
template <typename TQ, typename TC>
void gqa_decode_attention_team(TQ* out, const TQ* q, int64_t q_stride, const TC* k_cache,
                               const TC* v_cache, const int64_t* cache_rows,
                               const int32_t* seq_lens, int64_t batch, int64_t num_q_heads,
                               int64_t num_kv_heads, int64_t max_seq, int64_t head_dim,
                               float scale, const DecodePlan& plan, float* workspace);

// prefill_attention, run by every thread of the enclosing OpenMP parallel region (one
// orphaned worksharing loop, ending in a barrier). Token t of the chunk sits at position
// start_pos + t; q of token t at q + t * q_stride, its output at out + t * out_stride.
// \param k_cache, v_cache the sequence's [num_kv_heads, max_seq, head_dim]
// \param workspace prefill_attention_workspace_floats(threads of the region, ...) floats
template <typename TQ, typename TC>
void prefill_attention_team(TQ* out, int64_t out_stride, const TQ* q, int64_t q_stride,
                            const TC* k_cache, const TC* v_cache, int64_t tokens, int64_t start_pos,
                            int64_t num_q_heads, int64_t num_kv_heads, int64_t max_seq,
                            int64_t head_dim, float scale, float* workspace);

}  // namespace pyruntime::cpu::detail
