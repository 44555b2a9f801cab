// The engines for Python: built from the model description (model_spec.h), checked once and
// kept alive for the engine's lifetime; forward checks the cache and output tensors.
#include "engine.h"

#include <c10/util/Exception.h>

#include <string>

#ifdef PYRUNTIME_WITH_CUDA
#include "cuda_guard.h"
#endif

namespace pyruntime {

namespace {

// The sizes both engines' specs share, from the model description and the engine's options.
void fill_shape(EngineShape& s, const ModelSpec& m, int64_t max_seq, int64_t max_tokens, const char* owner) {
  s.hidden = m.hidden;
  s.inter = m.inter;
  s.num_heads = m.num_heads;
  s.num_kv_heads = m.num_kv_heads;
  s.head_dim = m.head_dim;
  s.vocab = m.vocab;
  s.rot_dim = m.rotary_dim;
  s.is_neox = m.rope_neox;
  s.eps = static_cast<float>(m.norm_eps);
  s.scale = static_cast<float>(m.attn_scale);
  s.max_seq = max_seq;
  s.max_tokens = max_tokens;
  TORCH_CHECK_VALUE(max_seq > 0 && m.rope_cos_sin.size(0) >= max_seq, owner, ": max_seq must be in [1, ",
                    m.rope_cos_sin.size(0), "] (the positions rope_cos_sin holds), got ", max_seq);
  TORCH_CHECK_VALUE(max_tokens > 0, owner, ": max_tokens must be positive, got ", max_tokens);
}

// tokens, positions, rows: contiguous int64 cpu vectors of one length n in [1, max_tokens];
// first_logit in [0, n]. Returns n.
int64_t check_inputs(const at::Tensor& tokens, const at::Tensor& positions, const at::Tensor& rows,
                     int64_t max_tokens, int64_t first_logit, const char* owner) {
  for (auto [t, name] : {std::pair{&tokens, "tokens"}, {&positions, "positions"}, {&rows, "rows"}}) {
    TORCH_CHECK_VALUE(t->device().is_cpu() && t->scalar_type() == at::kLong && t->dim() == 1 &&
                          t->is_contiguous(),
                      owner, ".forward: ", name, " must be a contiguous int64 cpu vector, got ",
                      t->scalar_type(), " ", t->sizes(), " on ", t->device());
  }
  const int64_t n = tokens.size(0);
  TORCH_CHECK_VALUE(positions.size(0) == n && rows.size(0) == n, owner,
                    ".forward: tokens, positions and rows must have one entry per token (", n, "), got ",
                    positions.size(0), " and ", rows.size(0));
  TORCH_CHECK_VALUE(n >= 1 && n <= max_tokens, owner, ".forward: tokens must hold 1 to ", max_tokens,
                    " tokens, got ", n);
  TORCH_CHECK_VALUE(first_logit >= 0 && first_logit <= n, owner, ".forward: first_logit must be in [0, ", n,
                    "] (n: no logits), got ", first_logit);
  return n;
}

// k_cache, v_cache: contiguous 1-D tensors of `dtype` on `device`, the same size, a positive
// whole number of cache rows of row_elements values (the engine's layout: every layer's
// [rows, Hkv, slots, D], one after another); logits: contiguous float32 [n - first_logit, vocab]
// on `device`. Returns the cache rows.
int64_t check_outputs(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& logits,
                      const EngineShape& s, int64_t row_elements, at::ScalarType dtype, at::Device device, int64_t n,
                      int64_t first_logit, const char* owner) {
  for (auto [t, name] : {std::pair{&k_cache, "k_cache"}, {&v_cache, "v_cache"}}) {
    TORCH_CHECK_VALUE(t->device() == device && t->scalar_type() == dtype && t->is_contiguous() && t->dim() == 1 &&
                          t->numel() > 0 && t->numel() % row_elements == 0,
                      owner, ".forward: ", name, " must be a contiguous 1-D ", dtype, " tensor on ", device,
                      " of a whole number of cache rows (", row_elements, " values each), got ", t->scalar_type(),
                      " ", t->sizes(), " on ", t->device());
  }
  TORCH_CHECK_VALUE(v_cache.sizes() == k_cache.sizes(), owner, ".forward: v_cache shape ", v_cache.sizes(),
                    " differs from k_cache ", k_cache.sizes());
  TORCH_CHECK_VALUE(logits.device() == device && logits.scalar_type() == at::kFloat && logits.is_contiguous() &&
                        logits.dim() == 2 && logits.size(0) == n - first_logit && logits.size(1) == s.vocab,
                    owner, ".forward: logits must be a contiguous float32 tensor on ", device, " [",
                    n - first_logit, ", ", s.vocab, "], got ", logits.scalar_type(), " ", logits.sizes(), " on ",
                    logits.device());
  return k_cache.numel() / row_elements;
}

}  // namespace

EngineHandle::EngineHandle(ModelSpec spec, int64_t max_seq, at::ScalarType kv_dtype, int64_t threads,
                           int64_t max_tokens, bool int8_activations)
    : spec_(std::move(spec)), kv_dtype_(kv_dtype) {
  spec_.check("Engine", at::kFloat, all_weight_formats());
  TORCH_CHECK_VALUE(spec_.embed.device().is_cpu(), "Engine: the weights must be on the cpu, got ",
                    spec_.embed.device());
  TORCH_CHECK_VALUE(kv_dtype == at::kFloat || kv_dtype == at::kBFloat16,
                    "Engine: kv_dtype must be float32 or bfloat16, got ", kv_dtype);
  TORCH_CHECK_VALUE(threads >= 0, "Engine: threads must be >= 0 (0: the OpenMP default), got ", threads);
  cpu::EngineSpec s;
  fill_shape(s, spec_, max_seq, max_tokens, "Engine");
  s.threads = static_cast<int>(threads);
  s.int8_activations = int8_activations;
  s.kv_dtype = kv_dtype == at::kFloat ? DType::Float32 : DType::BFloat16;
  s.cos_sin = spec_.rope_cos_sin.data_ptr<float>();
  s.embed = spec_.embed.view();
  s.lm_head = spec_.lm_head.view();
  s.final_norm = spec_.final_norm.data_ptr<float>();
#define PYRUNTIME_COPY_FEATURE(type, name, ...) s.name = spec_.name;
  PYRUNTIME_MODEL_FEATURES(PYRUNTIME_COPY_FEATURE)
#undef PYRUNTIME_COPY_FEATURE
  for (const LayerSpec& L : spec_.layers) s.layers.push_back(L.view());
  try {
    engine_ = std::make_unique<cpu::Engine>(std::move(s));
  } catch (const InvalidArgument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}

void EngineHandle::forward(const at::Tensor& tokens, const at::Tensor& positions,
                           const at::Tensor& rows, at::Tensor& k_cache, at::Tensor& v_cache,
                           at::Tensor& logits, int64_t first_logit, bool prompt,
                           const std::optional<at::Tensor>& logit_tokens) {
  const cpu::EngineSpec& s = engine_->spec();
  const int64_t n = check_inputs(tokens, positions, rows, s.max_tokens, first_logit, "Engine");
  if (logit_tokens)
    TORCH_CHECK_VALUE(logit_tokens->device().is_cpu() && logit_tokens->scalar_type() == at::kLong &&
                          logit_tokens->dim() == 1 && logit_tokens->is_contiguous() &&
                          logit_tokens->size(0) == n - first_logit,
                      "Engine.forward: logit_tokens must be a contiguous int64 cpu vector of n - first_logit = ",
                      n - first_logit, " token indices, got ", logit_tokens->scalar_type(), " ", logit_tokens->sizes());
  const int64_t cache_rows = check_outputs(k_cache, v_cache, logits, s, engine_->cache_row_elements(), kv_dtype_,
                                           at::Device(at::kCPU), n, first_logit, "Engine");
  std::lock_guard<std::mutex> guard(mutex_);
  try {
    engine_->forward(tokens.data_ptr<int64_t>(), positions.data_ptr<int64_t>(),
                     rows.data_ptr<int64_t>(), n, k_cache.data_ptr(), v_cache.data_ptr(),
                     cache_rows, logits.data_ptr<float>(), first_logit, prompt,
                     logit_tokens ? logit_tokens->data_ptr<int64_t>() : nullptr);
  } catch (const InvalidArgument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}

void EngineHandle::set_profiling(bool on) {
  std::lock_guard<std::mutex> guard(mutex_);
  engine_->set_profiling(on);
}

std::vector<EngineHandle::Event> EngineHandle::profile() {
  std::lock_guard<std::mutex> guard(mutex_);
  std::vector<Event> out;
  for (const auto& e : engine_->profile())
    out.emplace_back(e.call, e.layer, cpu::op_name(e.op), e.begin_ns, e.end_ns);
  return out;
}

int64_t EngineHandle::threads() const { return engine_->threads(); }
std::string EngineHandle::isa() const { return cpu::isa_name(engine_->isa()); }
int64_t EngineHandle::max_tokens() const { return engine_->spec().max_tokens; }
bool EngineHandle::int8_activations() const { return engine_->spec().int8_activations; }
int64_t EngineHandle::prompt_bits() const { return engine_->prompt_bits(); }
void EngineHandle::set_prompt_bits(int64_t bits) {
  TORCH_CHECK_VALUE(bits == 8 || bits == 16 || bits == 32, "prompt_bits must be 8, 16 or 32, got ", bits);
  engine_->set_prompt_bits(static_cast<int>(bits));
}
std::vector<int64_t> EngineHandle::layer_slots() const {
  std::vector<int64_t> out;
  for (int l = 0; l < static_cast<int>(spec_.layers.size()); ++l) out.push_back(engine_->layer_slots(l));
  return out;
}

#ifdef PYRUNTIME_WITH_CUDA
CudaEngineHandle::CudaEngineHandle(ModelSpec spec, int64_t max_seq, int64_t max_tokens) : spec_(std::move(spec)) {
  spec_.check("CudaEngine", at::kBFloat16, {WeightFormat::BFloat16});
  device_ = spec_.embed.device();
  TORCH_CHECK_VALUE(device_.is_cuda(), "CudaEngine: the weights must be on a CUDA device, got ", device_);
  // The CUDA kernels compute none of the model-wide features of some families (model_fields.h).
#define PYRUNTIME_REFUSE_FEATURE(type, name, off, ...) \
  TORCH_CHECK_VALUE(spec_.name == off, "CudaEngine: " #name " (this model's family has it) is not implemented on CUDA");
  PYRUNTIME_MODEL_FEATURES(PYRUNTIME_REFUSE_FEATURE)
#undef PYRUNTIME_REFUSE_FEATURE
  cuda::EngineSpec s;
  fill_shape(s, spec_, max_seq, max_tokens, "CudaEngine");
  s.dtype = DType::BFloat16;
  s.cos_sin = spec_.rope_cos_sin.data_ptr<float>();
  s.device = device_.index();
  s.embed = spec_.embed.data.data_ptr();
  s.lm_head = spec_.lm_head.data.data_ptr();
  s.final_norm = spec_.final_norm.data_ptr();
  // The CUDA kernels take q, k, v (and gate, up) as one matrix: adjacent row blocks of one
  // tensor, as pyruntime.spec.build_spec(fuse=True) makes them.
  auto stacked = [&](std::initializer_list<const WeightMatrix*> parts, const std::string& name) {
    const char* end = static_cast<const char*>((*parts.begin())->data.data_ptr());
    for (const WeightMatrix* m : parts) {
      TORCH_CHECK_VALUE(m->data.data_ptr() == end, "CudaEngine: ", name,
                        " must be adjacent row blocks of one tensor (pyruntime.spec.build_spec(fuse=True))");
      end += m->nbytes();
    }
    return (*parts.begin())->data.data_ptr();
  };
  for (size_t l = 0; l < spec_.layers.size(); ++l) {
    const LayerSpec& L = spec_.layers[l];
    const std::string p = "layers[" + std::to_string(l) + "].";
    // What the CUDA kernels compute of a layer's optional attributes (model_fields.h): the
    // biases. Any other present attribute is refused by name.
    for (const std::string& name : L.present_optionals())
      TORCH_CHECK_VALUE(name == "qkv_bias" || name == "o_bias", "CudaEngine: ", p, name,
                        " is not implemented on CUDA",
                        name == "sliding_window" ? " (a max_seq_len <= the window leaves every key in sight)" : "");
    cuda::EngineLayer e;
    e.attn_norm = L.attn_norm.data_ptr();
    e.mlp_norm = L.mlp_norm.data_ptr();
    e.qkv = stacked({&L.q, &L.k, &L.v}, p + "q, k and v");
    e.qkv_bias = L.qkv_bias ? L.qkv_bias->data_ptr() : nullptr;
    e.o = L.o.data.data_ptr();
    e.o_bias = L.o_bias ? L.o_bias->data_ptr() : nullptr;
    e.gate_up = stacked({&L.gate, &L.up}, p + "gate and up");
    e.down = L.down.data.data_ptr();
    s.layers.push_back(e);
  }
  // The weights' device current while the engine allocates (it sets it itself as well; the
  // guard keeps torch's view of the current device right around the call).
  const c10::cuda::CUDAGuard device_guard(device_);
  try {
    engine_ = std::make_unique<cuda::Engine>(std::move(s));
  } catch (const InvalidArgument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}

void CudaEngineHandle::forward(const at::Tensor& tokens, const at::Tensor& positions, const at::Tensor& rows,
                               at::Tensor& k_cache, at::Tensor& v_cache, at::Tensor& logits, int64_t first_logit,
                               int64_t stream) {
  const cuda::EngineSpec& s = engine_->spec();
  const int64_t n = check_inputs(tokens, positions, rows, s.max_tokens, first_logit, "CudaEngine");
  const int64_t cache_rows =
      check_outputs(k_cache, v_cache, logits, s, spec_.num_layers() * s.num_kv_heads * s.max_seq * s.head_dim,
                    at::kBFloat16, device_, n, first_logit, "CudaEngine");
  const c10::cuda::CUDAGuard device_guard(device_);
  std::lock_guard<std::mutex> guard(mutex_);
  try {
    engine_->forward(tokens.data_ptr<int64_t>(), positions.data_ptr<int64_t>(), rows.data_ptr<int64_t>(), n,
                     k_cache.data_ptr(), v_cache.data_ptr(), cache_rows, logits.data_ptr<float>(), first_logit,
                     reinterpret_cast<cudaStream_t>(static_cast<uintptr_t>(stream)));
  } catch (const InvalidArgument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}

void CudaEngineHandle::set_cuda_graphs(bool on) {
  std::lock_guard<std::mutex> guard(mutex_);
  engine_->set_cuda_graphs(on);
}
int64_t CudaEngineHandle::graphs() const {
  std::lock_guard<std::mutex> guard(mutex_);
  return engine_->graphs();
}
int64_t CudaEngineHandle::max_tokens() const { return engine_->spec().max_tokens; }
#endif

}  // namespace pyruntime
