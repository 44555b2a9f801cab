// Fused gated MLP at decode (1 and 4 tokens): bytes = the three weight matrices.
#include "bench_common.h"

namespace cpu = pyruntime::cpu;

template <typename T>
void add_cases(std::vector<bench::Case>& cases) {
  const char* dt = bench::dtype_label(T{});
  for (const auto& m : bench::kModels) {
    const int64_t h = m.hidden, inter = m.inter;
    const double bytes = 3.0 * h * inter * sizeof(T);
    const int copies = bench::copies_for(bytes);
    auto gu = bench::replicated<T>(2 * inter * h, copies, 0.02f);
    auto down = bench::replicated<T>(h * inter, copies, 0.02f);
    for (int64_t tokens : {int64_t(1), int64_t(4)}) {
      auto x = std::make_shared<std::vector<T>>(bench::random_buffer<T>(tokens * h));
      auto out = std::make_shared<std::vector<T>>(tokens * h);
      auto ws = std::make_shared<std::vector<float>>(cpu::gated_mlp_workspace_floats(tokens, h, inter));
      cases.push_back({std::string("gated_mlp ") + dt + " " + m.name + " tokens=" + std::to_string(tokens), bytes,
                       copies, [=](int i) {
                         cpu::gated_mlp(out->data(), x->data(), (*gu)[i].data(), (*down)[i].data(), tokens, h,
                                        inter, ws->data());
                       }});
    }
  }
}

int main(int argc, char** argv) {
  std::vector<bench::Case> cases;
  add_cases<float>(cases);
  add_cases<pyruntime::bf16>(cases);
  return bench::run("bench_gated_mlp", cases, argc, argv);
}
