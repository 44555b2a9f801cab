// The CPU kernels built for any x86-64 CPU: plain C++, no intrinsics (the
// compiler's baseline SSE2 at most).
// Chosen at run time by dispatch.cpp; see isa.h for why the target switch comes after it.
#define PYRUNTIME_ISA scalar
#define PYRUNTIME_ISA_ID Scalar
#include "isa.h"
#include "kernels.inc"
