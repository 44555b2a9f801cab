// rms_norm and fused_add_rms_norm: decode rows (1) and prefill-sized blocks of rows.
#include "bench_common.h"

namespace cpu = pyruntime::cpu;

template <typename T>
void add_cases(std::vector<bench::Case>& cases) {
  const char* dt = bench::dtype_label(T{});
  for (const auto& m : bench::kModels)
    for (int64_t rows : {int64_t(1), int64_t(4096)}) {
      const int64_t h = m.hidden;
      const double row_bytes = double(h) * sizeof(T);
      const int copies = bench::copies_for(row_bytes * rows * 2);
      auto x = bench::replicated<T>(rows * h, copies);
      auto r = bench::replicated<T>(rows * h, copies, 1.0f, 9);
      auto out = bench::replicated<T>(rows * h, copies);
      auto w = std::make_shared<std::vector<T>>(bench::random_buffer<T>(h));
      const std::string tag = std::string(dt) + " " + m.name + " rows=" + std::to_string(rows);
      cases.push_back({"rms_norm " + tag, row_bytes * (2 * rows + 1), copies, [=](int i) {
                         cpu::rms_norm((*out)[i].data(), h, (*x)[i].data(), h, w->data(), rows, h, 1e-6f);
                       }});
      cases.push_back({"fused_add_rms_norm " + tag, row_bytes * (4 * rows + 1), copies, [=](int i) {
                         cpu::fused_add_rms_norm((*x)[i].data(), h, (*r)[i].data(), h, w->data(), rows, h, 1e-6f);
                       }});
    }
}

int main(int argc, char** argv) {
  std::vector<bench::Case> cases;
  add_cases<float>(cases);
  add_cases<pyruntime::bf16>(cases);
  return bench::run("bench_rms_norm", cases, argc, argv);
}
