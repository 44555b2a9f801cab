// rotary_embedding and the fused rope + KV-cache write (rotary_embedding_and_cache), decode (1 token) and prefill (2048 tokens).
// In place on one buffer set (a few MB): these figures are cache-warm latencies.
#include "bench_common.h"

#include <cmath>

namespace cpu = pyruntime::cpu;

template <typename T>
void add_cases(std::vector<bench::Case>& cases) {
  const char* dt = bench::dtype_label(T{});
  const int64_t max_pos = 4096;
  for (const auto& m : bench::kModels) {
    const int64_t hq = m.num_q_heads, hkv = m.num_kv_heads, d = m.head_dim;
    auto cs = std::make_shared<std::vector<float>>(max_pos * d);
    for (int64_t p = 0; p < max_pos; ++p)
      for (int64_t i = 0; i < d / 2; ++i) {
        (*cs)[p * d + i] = std::cos(p * std::pow(10000.0, -2.0 * i / d));
        (*cs)[p * d + d / 2 + i] = std::sin(p * std::pow(10000.0, -2.0 * i / d));
      }
    for (int64_t tokens : {int64_t(1), int64_t(2048)}) {
      const double qk_bytes = 2.0 * tokens * (hq + hkv) * d * sizeof(T);
      const double cache_bytes = qk_bytes + 3.0 * tokens * hkv * d * sizeof(T);
      // Many tokens: copies of everything (the caches too) beyond the last-level cache. One
      // token: one copy (a latency case; 256 copies of the caches would not fit in memory).
      const int copies = tokens > 1 ? bench::copies_for(cache_bytes) : 1;
      auto q = bench::replicated<T>(tokens * hq * d, copies);
      auto k = bench::replicated<T>(tokens * hkv * d, copies);
      auto v = bench::replicated<T>(tokens * hkv * d, copies);
      auto pos = std::make_shared<std::vector<int64_t>>(tokens);
      // A prefill chunk: consecutive positions (each head's cache rows written in order).
      for (int64_t t = 0; t < tokens; ++t) (*pos)[t] = (t + 100) % max_pos;
      auto kc = bench::replicated<T>(hkv * max_pos * d, copies);
      auto vc = bench::replicated<T>(hkv * max_pos * d, copies);
      const cpu::HeadsView qv{hq * d, d, hq}, kv{hkv * d, d, hkv};
      cases.push_back({std::string("rotary_embedding ") + dt + " " + m.name + " tokens=" + std::to_string(tokens),
                       qk_bytes, copies, [=](int i) {
                         cpu::rotary_embedding(pos->data(), (*q)[i].data(), qv, (*k)[i].data(), kv, tokens, d,
                                               cs->data(), d, true);
                       }});
      cases.push_back({std::string("rotary_embedding_and_cache ") + dt + " " + m.name + " tokens=" +
                           std::to_string(tokens),
                       cache_bytes, copies, [=](int i) {
                         cpu::rotary_embedding_and_cache(pos->data(), (*q)[i].data(), qv, (*k)[i].data(),
                                                         (*v)[i].data(), kv, (*kc)[i].data(), (*vc)[i].data(), 1,
                                                         tokens, max_pos, d, cs->data(), d, true);
                       }});
    }
  }
}

int main(int argc, char** argv) {
  std::vector<bench::Case> cases;
  add_cases<float>(cases);
  add_cases<pyruntime::bf16>(cases);
  return bench::run("bench_rotary_embedding", cases, argc, argv);
}
