// The CPU engine's Python face: see csrc/include/pyruntime/engine.h for the engine itself.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "model_spec.h"
#include "pyruntime/engine.h"
#ifdef PYRUNTIME_WITH_CUDA
#include "pyruntime/cuda_engine.h"
#endif

namespace pyruntime {

class EngineHandle {
 public:
  // spec: on the cpu, norms and biases float32, matrices float32, bfloat16 or int8 (each its
  // own). max_seq: positions per cache row; max_tokens: tokens per forward call; threads: 0 for
  // the OpenMP default.
  // int8_activations: the integer products of the block formats (cpu::EngineSpec).
  EngineHandle(ModelSpec spec, int64_t max_seq, at::ScalarType kv_dtype, int64_t threads, int64_t max_tokens,
               bool int8_activations = true);
  const ModelSpec& spec() const { return spec_; }

  // prompt: cpu::Engine::forward's (a prompt's products take prompt_bits() activations).
  void forward(const at::Tensor& tokens, const at::Tensor& positions, const at::Tensor& rows,
               at::Tensor& k_cache, at::Tensor& v_cache, at::Tensor& logits, int64_t first_logit, bool prompt,
               const std::optional<at::Tensor>& logit_tokens);
  // Switching profiling on clears the events recorded so far.
  void set_profiling(bool on);
  // (call, layer, op, begin_ns, end_ns) of every forward call since profiling was switched on.
  using Event = std::tuple<int64_t, int64_t, std::string, int64_t, int64_t>;
  std::vector<Event> profile();
  int64_t threads() const;
  int64_t max_tokens() const;
  bool int8_activations() const;
  // cpu::Engine::prompt_bits (the effective choice); the setter switches spec.prompt_bits.
  int64_t prompt_bits() const;
  void set_prompt_bits(int64_t bits);
  // Positions each layer's cache keeps per sequence (cpu::kv_slots: a ring on sliding-window layers).
  std::vector<int64_t> layer_slots() const;
  // The instruction-set level of the CPU kernels this engine runs (cpu_isa.h).
  std::string isa() const;

 private:
  ModelSpec spec_;  // kept alive: the engine points into its tensors
  at::ScalarType kv_dtype_;
  std::unique_ptr<cpu::Engine> engine_;
  std::mutex mutex_;
};

#ifdef PYRUNTIME_WITH_CUDA
// The CUDA engine's Python face (csrc/include/pyruntime/cuda_engine.h), from the same model
// description as EngineHandle: every tensor on one CUDA device in bfloat16, the norms included. The stream comes from Python
// as torch.cuda.current_stream(device).cuda_stream; the constructor and forward make the
// tensors' device current (c10::cuda::CUDAGuard) and give the caller's back.
class CudaEngineHandle {
 public:
  CudaEngineHandle(ModelSpec spec, int64_t max_seq, int64_t max_tokens);
  const ModelSpec& spec() const { return spec_; }
  void forward(const at::Tensor& tokens, const at::Tensor& positions, const at::Tensor& rows,
               at::Tensor& k_cache, at::Tensor& v_cache, at::Tensor& logits, int64_t first_logit,
               int64_t stream);
  void set_cuda_graphs(bool on);
  int64_t graphs() const;
  int64_t max_tokens() const;

 private:
  ModelSpec spec_;
  at::Device device_{at::kCPU};
  std::unique_ptr<cuda::Engine> engine_;
  mutable std::mutex mutex_;
};
#endif

}  // namespace pyruntime
