// What the CPU and CUDA engines share: the model's sizes and the checks of a spec and of a
// forward call's arguments (InvalidArgument naming the field or argument).
#pragma once

#include <cstdint>
#include <string>

#include "pyruntime/common.h"
#include "pyruntime/dispatch.h"

namespace pyruntime {

struct EngineShape {
  int64_t hidden = 0, inter = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0, vocab = 0;
  int64_t max_seq = 0;     // positions the cos/sin table and the KV cache hold
  int64_t rot_dim = 0;     // rotary features per head (<= head_dim)
  bool is_neox = true;
  float eps = 1e-6f;
  float scale = 0.0f;       // attention scale; 0 means 1/sqrt(head_dim)
  int64_t max_tokens = 16;  // tokens per forward call (decode batch or prefill chunk)
};

inline void check_engine_shape(const EngineShape& s, const std::string& owner) {
  PYRUNTIME_CHECK(s.hidden > 0 && s.inter > 0 && s.vocab > 0 && s.num_heads > 0 && s.num_kv_heads > 0,
                  owner + ": hidden, inter, vocab, num_heads and num_kv_heads must be positive");
  PYRUNTIME_CHECK(s.num_heads % s.num_kv_heads == 0,
                  owner + ": num_heads (" + std::to_string(s.num_heads) + ") must be a multiple of num_kv_heads (" +
                      std::to_string(s.num_kv_heads) + ")");
  PYRUNTIME_CHECK(is_supported_head_dim(s.head_dim), owner + ": unsupported head_dim " + std::to_string(s.head_dim) +
                                                         " (supported: " PYRUNTIME_HEAD_DIMS_STR ")");
  PYRUNTIME_CHECK(s.rot_dim > 0 && s.rot_dim <= s.head_dim && s.rot_dim % 2 == 0,
                  owner + ": rot_dim must be even and in (0, head_dim]");
  PYRUNTIME_CHECK(s.max_seq > 0 && s.max_seq <= INT32_MAX, owner + ": max_seq out of range");
  PYRUNTIME_CHECK(s.max_tokens > 0, owner + ": max_tokens must be positive");
}

// Token i sits at position positions[i] of cache row rows[i]; no two tokens share a slot, and
// the tokens of one row lie within max_tokens consecutive positions.
inline void check_forward_args(const EngineShape& s, const int64_t* tokens, const int64_t* positions,
                               const int64_t* rows, int64_t n, int64_t cache_rows, int64_t first_logit,
                               const std::string& owner) {
  const std::string f = owner + ".forward: ";
  PYRUNTIME_CHECK(n >= 1 && n <= s.max_tokens,
                  f + "n must be in [1, " + std::to_string(s.max_tokens) + "], got " + std::to_string(n));
  PYRUNTIME_CHECK(first_logit >= 0 && first_logit <= n, f + "first_logit must be in [0, n]");
  for (int64_t i = 0; i < n; ++i) {
    PYRUNTIME_CHECK(tokens[i] >= 0 && tokens[i] < s.vocab,
                    f + "tokens[" + std::to_string(i) + "] = " + std::to_string(tokens[i]) + " is outside [0, " +
                        std::to_string(s.vocab) + ")");
    PYRUNTIME_CHECK(positions[i] >= 0 && positions[i] < s.max_seq,
                    f + "positions[" + std::to_string(i) + "] = " + std::to_string(positions[i]) +
                        " is outside [0, " + std::to_string(s.max_seq) + ")");
    PYRUNTIME_CHECK(rows[i] >= 0 && rows[i] < cache_rows,
                    f + "rows[" + std::to_string(i) + "] = " + std::to_string(rows[i]) + " is outside [0, " +
                        std::to_string(cache_rows) + ")");
    for (int64_t j = 0; j < i; ++j) {
      if (rows[j] != rows[i]) continue;
      PYRUNTIME_CHECK(positions[j] != positions[i], f + "tokens " + std::to_string(j) + " and " +
                                                        std::to_string(i) + " write the same cache row and position");
      PYRUNTIME_CHECK(positions[j] - positions[i] < s.max_tokens && positions[i] - positions[j] < s.max_tokens,
                      f + "tokens " + std::to_string(j) + " and " + std::to_string(i) +
                          " of one cache row lie more than max_tokens (" + std::to_string(s.max_tokens) +
                          ") positions apart");
    }
  }
}

}  // namespace pyruntime
