// The head sizes the attention kernels are compiled for (CPU and CUDA alike).
#pragma once

#define PYRUNTIME_FOR_EACH_HEAD_DIM(X) X(32) X(64) X(80) X(96) X(128) X(256)
#define PYRUNTIME_HEAD_DIMS_STR "32, 64, 80, 96, 128, 256"

namespace pyruntime {

inline bool is_supported_head_dim(long long d) {
#define PYRUNTIME_HEAD_DIM_EQ(D) if (d == D) return true;
  PYRUNTIME_FOR_EACH_HEAD_DIM(PYRUNTIME_HEAD_DIM_EQ)
#undef PYRUNTIME_HEAD_DIM_EQ
  return false;
}

}  // namespace pyruntime
