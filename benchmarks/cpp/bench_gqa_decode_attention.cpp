// Split-KV GQA decode attention, batch 1, KV lengths 512 .. 32768: bytes = K and V read.
#include "bench_common.h"

namespace cpu = pyruntime::cpu;

template <typename T>
void add_cases(std::vector<bench::Case>& cases, bool quick) {
  const char* dt = bench::dtype_label(T{});
  for (const auto& m : bench::kModels)
    for (int32_t s : {144, 512, 2048, 8192, 32768}) {
      if (quick && s > 8192) continue;
      const int64_t hq = m.num_q_heads, hkv = m.num_kv_heads, d = m.head_dim;
      const double bytes = 2.0 * hkv * s * d * sizeof(T);
      const int copies = bench::copies_for(bytes);
      auto q = std::make_shared<std::vector<T>>(bench::random_buffer<T>(hq * d));
      auto kc = bench::replicated<T>(hkv * s * d, copies);
      auto vc = bench::replicated<T>(hkv * s * d, copies, 1.0f, 3);
      auto out = std::make_shared<std::vector<T>>(hq * d);
      auto lens = std::make_shared<std::vector<int32_t>>(1, s);
      auto plan = cpu::plan_gqa_decode(lens->data(), 1, hkv);
      auto ws = std::make_shared<std::vector<float>>(cpu::gqa_decode_workspace_floats(plan, 1, hq, d));
      cases.push_back({std::string("gqa_decode_attention ") + dt + " " + m.name + " S=" + std::to_string(s), bytes,
                       copies, [=](int i) {
                         cpu::gqa_decode_attention(out->data(), q->data(), (*kc)[i].data(), (*vc)[i].data(),
                                                   lens->data(), 1, hq, hkv, s, d, 1.0f / std::sqrt(float(d)), plan,
                                                   ws->data());
                       }});
    }
}

int main(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) quick |= !std::strcmp(argv[i], "--quick");
  std::vector<bench::Case> cases;
  add_cases<float>(cases, quick);
  add_cases<pyruntime::bf16>(cases, quick);
  return bench::run("bench_gqa_decode_attention", cases, argc, argv);
}
