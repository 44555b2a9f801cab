// rms_norm and fused_add_rms_norm: decode rows of real models, and a 64+ MB working set.
#include "bench_common.h"

namespace cpu = pyruntime::cpu;

template <typename T>
void add_cases(std::vector<bench::Case>& cases) {
  const char* dt = bench::dtype_label(T{});
  for (const auto& m : bench::kModels)
    for (int64_t rows : {int64_t(1), int64_t(16384)}) {
      const int64_t h = m.hidden;
      auto x = std::make_shared<std::vector<T>>(bench::random_buffer<T>(rows * h));
      auto r = std::make_shared<std::vector<T>>(bench::random_buffer<T>(rows * h, 1.0f, 9));
      auto w = std::make_shared<std::vector<T>>(bench::random_buffer<T>(h));
      auto out = std::make_shared<std::vector<T>>(rows * h);
      const double row_bytes = double(h) * sizeof(T);
      cases.push_back({std::string("rms_norm ") + dt + " " + m.name + " rows=" + std::to_string(rows),
                       row_bytes * (2 * rows + 1),
                       [=] { cpu::rms_norm(out->data(), h, x->data(), h, w->data(), rows, h, 1e-6f); }});
      cases.push_back({std::string("fused_add_rms_norm ") + dt + " " + m.name + " rows=" + std::to_string(rows),
                       row_bytes * (4 * rows + 1), [=] {
                         cpu::fused_add_rms_norm(x->data(), h, r->data(), h, w->data(), rows, h, 1e-6f);
                       }});
    }
}

int main(int argc, char** argv) {
  std::vector<bench::Case> cases;
  add_cases<float>(cases);
  add_cases<pyruntime::bf16>(cases);
  return bench::run("bench_rms_norm", cases, argc, argv);
}
