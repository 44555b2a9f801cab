// silu_and_mul on decode rows of real models and on a working set beyond the caches.
#include "bench_common.h"

namespace cpu = pyruntime::cpu;

template <typename T>
void add_cases(std::vector<bench::Case>& cases) {
  const char* dt = bench::dtype_label(T{});
  for (const auto& m : bench::kModels)
    for (int64_t rows : {int64_t(1), int64_t(2048)}) {
      const int64_t inter = m.inter;
      auto x = std::make_shared<std::vector<T>>(bench::random_buffer<T>(rows * 2 * inter));
      auto out = std::make_shared<std::vector<T>>(rows * inter);
      cases.push_back({std::string("silu_and_mul ") + dt + " " + m.name + " rows=" + std::to_string(rows),
                       double(rows) * inter * 3 * sizeof(T),
                       [=] { cpu::silu_and_mul(out->data(), inter, x->data(), 2 * inter, rows, inter); }});
    }
}

int main(int argc, char** argv) {
  std::vector<bench::Case> cases;
  add_cases<float>(cases);
  add_cases<pyruntime::bf16>(cases);
  return bench::run("bench_silu_and_mul", cases, argc, argv);
}
