// The CPU kernels built for AVX-512 with the BF16 conversions (Cooper Lake, Sapphire Rapids, Zen 4).
// Chosen at run time by dispatch.cpp; see isa.h for why the target switch comes after it.
#define PYRUNTIME_ISA avx512bf16
#define PYRUNTIME_ISA_ID Avx512Bf16
#include "isa.h"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")
#define PYRUNTIME_VEC_AVX512 1
#define PYRUNTIME_VEC_BF16 1
#include "kernels.inc"
