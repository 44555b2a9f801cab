// torch's CUDA device guard and current-stream headers for the bindings' CUDA parts (ops.cpp,
// engine.cpp, under PYRUNTIME_WITH_CUDA), as vLLM and FlashInfer use them:
// `const c10::cuda::OptionalCUDAGuard device_guard(t.device());` before any launch.
#pragma once

// A CPU-only torch installs c10/cuda's headers without the file its CMake generates
// (cuda_cmake_macros.h, which only sets C10_CUDA_BUILD_SHARED_LIBS for Windows exports). The
// CPU-only build machines never build the CUDA extension, but scripts/test.sh syntax-checks
// these files with PYRUNTIME_WITH_CUDA there: skip that file, as torch's HIP build does, only
// where it is absent. A torch with CUDA always has it and includes it as usual.
#if !__has_include(<c10/cuda/impl/cuda_cmake_macros.h>) && !defined(C10_CUDA_NO_CMAKE_CONFIGURE_FILE)
#define C10_CUDA_NO_CMAKE_CONFIGURE_FILE
#endif
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
