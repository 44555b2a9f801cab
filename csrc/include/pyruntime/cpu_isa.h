// Which build of the CPU kernels runs. Every kernel is compiled once per instruction-set
// level below (csrc/cpu/kernels_<isa>.cpp) into its own namespace, pyruntime::cpu::<isa>;
// the public functions of cpu_kernels.h and the Engine dispatch to the level chosen at run
// time: the best one this CPU and OS support (cpuid), or the one the environment variable
// PYRUNTIME_CPU_ISA names (scalar, avx2, avx512, avx512bf16), or set_active_isa's.
#pragma once

#include <string>

namespace pyruntime::cpu {

// X(enumerator, namespace) for every level, lowest first.
#define PYRUNTIME_FOR_EACH_ISA(X) X(Scalar, scalar) X(Avx2, avx2) X(Avx512, avx512) X(Avx512Bf16, avx512bf16)

#define PYRUNTIME_ISA_ENUM(E, ns) E,
enum class Isa : int { PYRUNTIME_FOR_EACH_ISA(PYRUNTIME_ISA_ENUM) Count };
#undef PYRUNTIME_ISA_ENUM

// What cpuid (and the OS's saved-state mask) says this CPU can run.
struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512bf16 = false, avx512vnni = false;
  bool amx_tile = false, amx_bf16 = false;
};
const CpuFeatures& cpu_features();

const char* isa_name(Isa isa);
// The level named `name`; InvalidArgument listing the names otherwise.
Isa parse_isa(const std::string& name);
// The CPU features `isa` needs that this CPU lacks, comma-separated ("" when it runs here).
std::string isa_missing_features(Isa isa);
// The highest level this CPU runs.
Isa best_isa();
// The level the kernels run at now: PYRUNTIME_CPU_ISA when set (InvalidArgument on the first
// kernel call when this CPU cannot run it), else best_isa().
Isa active_isa();
// Switches every later kernel call (and every Engine built later) to `isa`; InvalidArgument
// naming the missing features when this CPU cannot run it.
void set_active_isa(Isa isa);

// The special paths a level takes inside its products, where the CPU has them: AVX512-VNNI
// (int8 weights times int16 activations, and the Q4_0/Q4_1/Q8_0 decode products with a weight
// row per 512-bit lane; PYRUNTIME_NO_VNNI=1 turns it off), bf16 prefill products on AMX tiles
// (PYRUNTIME_NO_AMX=1 turns it off).
struct KernelPaths {
  bool int8_vnni = false;
  bool bf16_amx = false;
};

// How many weight rows one token's integer decode product reads at once (linear_q8.h): 1, one
// row after another, a single stream from memory (the default on AMD CPUs before Zen 5, whose
// prefetchers follow it best: benchmarks/README.md, AVX2 kernels), or 4, four rows side by side
// with the rows ahead prefetched in software and the 32-value formats a row per vector lane (8
// or 16 rows; the default elsewhere: tuned on an Intel Xeon, and faster on Zen 5 as well). Each row's sums are the same bits
// either way. PYRUNTIME_Q8_DECODE_ROWS (1 or 4) sets it for the process (InvalidArgument on the
// first kernel call for any other value), set_q8_decode_rows later (0 restores the
// process's default).
int q8_decode_rows();
void set_q8_decode_rows(int rows);

}  // namespace pyruntime::cpu
