// Fused gated MLP at decode (1 and 4 tokens): bytes = the three weight matrices.
#include "bench_common.h"

namespace cpu = pyruntime::cpu;

template <typename T>
void add_cases(std::vector<bench::Case>& cases) {
  const char* dt = bench::dtype_label(T{});
  for (const auto& m : bench::kModels) {
    const int64_t h = m.hidden, inter = m.inter;
    auto gu = std::make_shared<std::vector<T>>(bench::random_buffer<T>(2 * inter * h, 0.02f));
    auto down = std::make_shared<std::vector<T>>(bench::random_buffer<T>(h * inter, 0.02f));
    for (int64_t tokens : {int64_t(1), int64_t(4)}) {
      auto x = std::make_shared<std::vector<T>>(bench::random_buffer<T>(tokens * h));
      auto out = std::make_shared<std::vector<T>>(tokens * h);
      auto ws = std::make_shared<std::vector<float>>(cpu::gated_mlp_workspace_floats(tokens, h, inter));
      cases.push_back({std::string("gated_mlp ") + dt + " " + m.name + " tokens=" + std::to_string(tokens),
                       3.0 * h * inter * sizeof(T), [=] {
                         cpu::gated_mlp(out->data(), x->data(), gu->data(), down->data(), tokens, h,
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
