// The CPU kernels built for AVX2 + FMA + F16C (Haswell, Zen 1 and later).
// Chosen at run time by dispatch.cpp; see isa.h for why the target switch comes after it.
#define PYRUNTIME_ISA avx2
#define PYRUNTIME_ISA_ID Avx2
#include "isa.h"
#pragma GCC target("avx2,fma,f16c")
#define PYRUNTIME_VEC_AVX2 1
#include "kernels.inc"
