// silu_and_mul on decode rows (1) and prefill-sized blocks of rows.
#include "bench_common.h"

namespace cpu = pyruntime::cpu;

template <typename T>
void add_cases(std::vector<bench::Case>& cases) {
  const char* dt = bench::dtype_label(T{});
  for (const auto& m : bench::kModels)
    for (int64_t rows : {int64_t(1), int64_t(512)}) {
      const int64_t inter = m.inter;
      const double bytes = double(rows) * inter * 3 * sizeof(T);
      const int copies = bench::copies_for(bytes);
      auto x = bench::replicated<T>(rows * 2 * inter, copies);
      auto out = bench::replicated<T>(rows * inter, copies);
      cases.push_back({std::string("silu_and_mul ") + dt + " " + m.name + " rows=" + std::to_string(rows), bytes,
                       copies, [=](int i) {
                         cpu::silu_and_mul((*out)[i].data(), inter, (*x)[i].data(), 2 * inter, rows, inter);
                       }});
    }
}

int main(int argc, char** argv) {
  std::vector<bench::Case> cases;
  add_cases<float>(cases);
  add_cases<pyruntime::bf16>(cases);
  return bench::run("bench_silu_and_mul", cases, argc, argv);
}
