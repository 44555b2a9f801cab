// The CPU engine's Python face: see csrc/include/pyruntime/engine.h for the engine itself.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "pyruntime/engine.h"
#ifdef PYRUNTIME_WITH_CUDA
#include "pyruntime/cuda_engine.h"
#endif

namespace pyruntime {

// cpu::quantize_int8 of a float32 [rows, cols] cpu tensor: (q int8 [rows, cols], scales
// float32 [rows, cols / group]).
std::tuple<at::Tensor, at::Tensor> quantize_int8(const at::Tensor& w, int64_t group);
int64_t int8_group_size(int64_t cols);
// cpu::pack_int8_rows of quantize_int8's (q, scales): (q [rows / 4, groups, 4, group], scales
// [rows / 4, groups, 4]), the engine's int8 row blocks.
std::tuple<at::Tensor, at::Tensor> pack_int8_rows(const at::Tensor& q, const at::Tensor& scales);

class EngineHandle {
 public:
  // config: hidden, inter, num_heads, num_kv_heads, head_dim, vocab, num_layers, max_seq,
  // rot_dim, is_neox, eps, scale, max_tokens, threads. tensors: embed, lm_head, final_norm,
  // cos_sin, and per layer "layers.{i}." attn_norm, qkv, qkv_bias (optional), o, o_bias
  // (optional), mlp_norm, gate_up, down; int8 matrices come with "<name>.scales".
  EngineHandle(const std::map<std::string, double>& config, const std::string& format,
               at::ScalarType kv_dtype, std::map<std::string, at::Tensor> tensors);

  void forward(const at::Tensor& tokens, const at::Tensor& positions, const at::Tensor& rows,
               at::Tensor& k_cache, at::Tensor& v_cache, at::Tensor& logits, int64_t first_logit);
  // Switching profiling on clears the events recorded so far.
  void set_profiling(bool on);
  // (call, layer, op, begin_ns, end_ns) of every forward call since profiling was switched on.
  using Event = std::tuple<int64_t, int64_t, std::string, int64_t, int64_t>;
  std::vector<Event> profile();
  int64_t threads() const;
  int64_t max_tokens() const;
  // The instruction-set level of the CPU kernels this engine runs (cpu_isa.h).
  std::string isa() const;

 private:
  const at::Tensor& tensor(const std::string& name);
  const float* vector(const std::string& name, int64_t size, bool optional = false);
  cpu::Matrix matrix(const std::string& name, cpu::WeightFormat format);

  std::map<std::string, at::Tensor> tensors_;  // kept alive: the engine points into them
  at::ScalarType kv_dtype_;
  int64_t num_layers_ = 0;
  std::unique_ptr<cpu::Engine> engine_;
  std::mutex mutex_;
};

#ifdef PYRUNTIME_WITH_CUDA
// The CUDA engine's Python face (csrc/include/pyruntime/cuda_engine.h). Same config keys and
// tensor names as EngineHandle (minus threads and int8); every tensor on one CUDA device in
// the engine's dtype (bfloat16 or float16), the norms included. The stream comes from Python
// as torch.cuda.current_stream(device).cuda_stream; the constructor and forward make the
// tensors' device current (c10::cuda::CUDAGuard) and give the caller's back.
class CudaEngineHandle {
 public:
  CudaEngineHandle(const std::map<std::string, double>& config, at::ScalarType dtype,
                   std::map<std::string, at::Tensor> tensors);
  void forward(const at::Tensor& tokens, const at::Tensor& positions, const at::Tensor& rows,
               at::Tensor& k_cache, at::Tensor& v_cache, at::Tensor& logits, int64_t first_logit,
               int64_t stream);
  void set_cuda_graphs(bool on);
  int64_t graphs() const;
  int64_t max_tokens() const;

 private:
  const void* weight(const std::string& name, std::vector<int64_t> shape, bool optional = false);

  std::map<std::string, at::Tensor> tensors_;
  at::ScalarType dtype_;
  at::Device device_{at::kCPU};
  int64_t num_layers_ = 0;
  std::unique_ptr<cuda::Engine> engine_;
  mutable std::mutex mutex_;
};
#endif

}  // namespace pyruntime
