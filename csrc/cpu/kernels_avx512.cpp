// The CPU kernels built for AVX-512 F/BW/VL/DQ (Skylake-SP, Zen 4 and later).
// Chosen at run time by dispatch.cpp; see isa.h for why the target switch comes after it.
#define PYRUNTIME_ISA avx512
#define PYRUNTIME_ISA_ID Avx512
#include "isa.h"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#define PYRUNTIME_VEC_AVX512 1
#include "kernels.inc"
