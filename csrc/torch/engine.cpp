// The CPU engine (csrc/cpu/engine.cpp) for Python: weight tensors checked once and kept
// alive for the engine's lifetime; forward checks the cache and output tensors.
#include "engine.h"

#include <c10/util/Exception.h>

#include <string>

#ifdef PYRUNTIME_WITH_CUDA
#include "cuda_guard.h"
#endif

namespace pyruntime {

namespace {

using cpu::WeightFormat;

WeightFormat parse_format(const std::string& f) {
  if (f == "float32") return WeightFormat::Float32;
  if (f == "bfloat16") return WeightFormat::BFloat16;
  if (f == "int8") return WeightFormat::Int8;
  TORCH_CHECK_VALUE(false, "Engine: format must be float32, bfloat16 or int8, got '", f, "'");
}

at::ScalarType storage_type(WeightFormat f) {
  switch (f) {
    case WeightFormat::Float32: return at::kFloat;
    case WeightFormat::BFloat16: return at::kBFloat16;
    case WeightFormat::Int8: return at::kChar;
  }
  return at::kFloat;
}

double config_get(const std::map<std::string, double>& config, const char* key, const char* owner) {
  auto it = config.find(key);
  TORCH_CHECK_VALUE(it != config.end(), owner, ": config['", key, "'] is missing");
  return it->second;
}

// The sizes both engines' specs share; returns num_layers.
template <typename Spec>
int64_t read_config(Spec& s, const std::map<std::string, double>& config, const char* owner) {
  auto get = [&](const char* key) { return config_get(config, key, owner); };
  s.hidden = static_cast<int64_t>(get("hidden"));
  s.inter = static_cast<int64_t>(get("inter"));
  s.num_heads = static_cast<int64_t>(get("num_heads"));
  s.num_kv_heads = static_cast<int64_t>(get("num_kv_heads"));
  s.head_dim = static_cast<int64_t>(get("head_dim"));
  s.vocab = static_cast<int64_t>(get("vocab"));
  s.max_seq = static_cast<int64_t>(get("max_seq"));
  s.rot_dim = static_cast<int64_t>(get("rot_dim"));
  s.is_neox = get("is_neox") != 0.0;
  s.eps = static_cast<float>(get("eps"));
  s.scale = static_cast<float>(get("scale"));
  s.max_tokens = static_cast<int64_t>(get("max_tokens"));
  const int64_t num_layers = static_cast<int64_t>(get("num_layers"));
  TORCH_CHECK_VALUE(num_layers > 0, owner, ": num_layers must be positive");
  TORCH_CHECK_VALUE(s.max_seq > 0 && s.rot_dim > 0, owner, ": max_seq and rot_dim must be positive");
  return num_layers;
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

// k_cache, v_cache: contiguous [num_layers, rows, Hkv, max_seq, D] of `dtype` on `device`;
// logits: contiguous float32 [n - first_logit, vocab] on `device`.
template <typename Spec>
void check_outputs(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& logits,
                   const Spec& s, int64_t num_layers, at::ScalarType dtype, at::Device device, int64_t n,
                   int64_t first_logit, const char* owner) {
  for (auto [t, name] : {std::pair{&k_cache, "k_cache"}, {&v_cache, "v_cache"}}) {
    TORCH_CHECK_VALUE(t->device() == device && t->scalar_type() == dtype && t->is_contiguous() &&
                          t->dim() == 5 && t->size(0) == num_layers && t->size(2) == s.num_kv_heads &&
                          t->size(3) == s.max_seq && t->size(4) == s.head_dim,
                      owner, ".forward: ", name, " must be a contiguous ", dtype, " tensor on ", device, " [",
                      num_layers, ", rows, ", s.num_kv_heads, ", ", s.max_seq, ", ", s.head_dim, "], got ",
                      t->scalar_type(), " ", t->sizes(), " on ", t->device());
  }
  TORCH_CHECK_VALUE(v_cache.sizes() == k_cache.sizes(), owner, ".forward: v_cache shape ", v_cache.sizes(),
                    " differs from k_cache ", k_cache.sizes());
  TORCH_CHECK_VALUE(logits.device() == device && logits.scalar_type() == at::kFloat && logits.is_contiguous() &&
                        logits.dim() == 2 && logits.size(0) == n - first_logit && logits.size(1) == s.vocab,
                    owner, ".forward: logits must be a contiguous float32 tensor on ", device, " [",
                    n - first_logit, ", ", s.vocab, "], got ", logits.scalar_type(), " ", logits.sizes(), " on ",
                    logits.device());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> quantize_int8(const at::Tensor& w, int64_t group) {
  TORCH_CHECK_VALUE(w.device().is_cpu() && w.scalar_type() == at::kFloat && w.dim() == 2,
                    "quantize_int8: w must be a float32 cpu matrix, got ", w.scalar_type(), " ",
                    w.sizes(), " on ", w.device());
  TORCH_CHECK_VALUE(group > 0 && w.size(1) % group == 0, "quantize_int8: w must be [rows, cols] with cols ",
                    "divisible by group ", group, ", got ", w.sizes());
  const at::Tensor src = w.contiguous();
  at::Tensor q = at::empty(src.sizes(), src.options().dtype(at::kChar));
  at::Tensor scales = at::empty({src.size(0), src.size(1) / group}, src.options());
  cpu::quantize_int8(src.data_ptr<float>(), src.size(0), src.size(1), group, q.data_ptr<int8_t>(),
                     scales.data_ptr<float>());
  return {q, scales};
}

std::tuple<at::Tensor, at::Tensor> pack_int8_rows(const at::Tensor& q, const at::Tensor& scales) {
  TORCH_CHECK_VALUE(q.device().is_cpu() && q.scalar_type() == at::kChar && q.dim() == 2 && q.is_contiguous(),
                    "pack_int8_rows: q must be a contiguous int8 cpu matrix, got ", q.scalar_type(), " ",
                    q.sizes(), " on ", q.device());
  TORCH_CHECK_VALUE(scales.device().is_cpu() && scales.scalar_type() == at::kFloat && scales.dim() == 2 &&
                        scales.is_contiguous() && scales.size(0) == q.size(0) && scales.size(1) > 0 &&
                        q.size(1) % scales.size(1) == 0,
                    "pack_int8_rows: scales must be a contiguous float32 cpu matrix [", q.size(0),
                    ", groups] with groups dividing ", q.size(1), ", got ", scales.scalar_type(), " ",
                    scales.sizes(), " on ", scales.device());
  const int64_t rows = q.size(0), groups = scales.size(1), group = q.size(1) / groups, B = cpu::kInt8BlockRows;
  TORCH_CHECK_VALUE(rows % B == 0, "pack_int8_rows: rows (", rows, ") must be a multiple of ", B);
  at::Tensor q_out = at::empty({rows / B, groups, B, group}, q.options());
  at::Tensor s_out = at::empty({rows / B, groups, B}, scales.options());
  cpu::pack_int8_rows(q.data_ptr<int8_t>(), scales.data_ptr<float>(), rows, q.size(1), group,
                      q_out.data_ptr<int8_t>(), s_out.data_ptr<float>());
  return {q_out, s_out};
}

int64_t int8_group_size(int64_t cols) {
  try {
    return cpu::int8_group_size(cols);
  } catch (const InvalidArgument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}

const at::Tensor& EngineHandle::tensor(const std::string& name) {
  auto it = tensors_.find(name);
  TORCH_CHECK_VALUE(it != tensors_.end(), "Engine: tensor '", name, "' is missing");
  const at::Tensor& t = it->second;
  TORCH_CHECK_VALUE(t.device().is_cpu(), "Engine: ", name, " must be on the cpu, got ", t.device());
  TORCH_CHECK_VALUE(t.is_contiguous(), "Engine: ", name, " must be contiguous");
  return t;
}

const float* EngineHandle::vector(const std::string& name, int64_t size, bool optional) {
  if (optional && !tensors_.count(name)) return nullptr;
  const at::Tensor& t = tensor(name);
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat && t.dim() == 1 && t.size(0) == size, "Engine: ",
                    name, " must be float32 [", size, "], got ", t.scalar_type(), " ", t.sizes());
  return t.data_ptr<float>();
}

cpu::Matrix EngineHandle::matrix(const std::string& name, WeightFormat format) {
  const at::Tensor& t = tensor(name);
  TORCH_CHECK_VALUE(t.scalar_type() == storage_type(format), "Engine: ", name, " must be ",
                    storage_type(format), " for format ", cpu::weight_format_name(format), ", got ",
                    t.scalar_type());
  cpu::Matrix m;
  m.data = t.data_ptr();
  if (format == WeightFormat::Int8 && t.dim() == 4) {
    // Rows interleaved in blocks (pack_int8_rows): q [rows / B, groups, B, group], scales [rows / B, groups, B].
    const at::Tensor& s = tensor(name + ".scales");
    TORCH_CHECK_VALUE(t.size(2) == cpu::kInt8BlockRows && s.scalar_type() == at::kFloat && s.dim() == 3 &&
                          s.sizes() == t.sizes().slice(0, 3),
                      "Engine: ", name, " in row blocks must be int8 [rows / ", cpu::kInt8BlockRows,
                      ", groups, ", cpu::kInt8BlockRows, ", group] with float32 scales [rows / ",
                      cpu::kInt8BlockRows, ", groups, ", cpu::kInt8BlockRows, "], got ", t.sizes(), " and ",
                      s.scalar_type(), " ", s.sizes());
    m.rows = t.size(0) * t.size(2);
    m.cols = t.size(1) * t.size(3);
    m.group = t.size(3);
    m.block_rows = t.size(2);
    m.scales = s.data_ptr<float>();
    return m;
  }
  TORCH_CHECK_VALUE(t.dim() == 2, "Engine: ", name, " must be 2-D, got ", t.sizes());
  m.rows = t.size(0);
  m.cols = t.size(1);
  if (format == WeightFormat::Int8) {
    const at::Tensor& s = tensor(name + ".scales");
    TORCH_CHECK_VALUE(s.scalar_type() == at::kFloat && s.dim() == 2 && s.size(0) == m.rows &&
                          s.size(1) > 0 && m.cols % s.size(1) == 0,
                      "Engine: ", name, ".scales must be float32 [", m.rows,
                      ", groups] with groups dividing ", m.cols, ", got ", s.scalar_type(), " ",
                      s.sizes());
    m.scales = s.data_ptr<float>();
    m.group = m.cols / s.size(1);
  }
  return m;
}

EngineHandle::EngineHandle(const std::map<std::string, double>& config, const std::string& format,
                           at::ScalarType kv_dtype, std::map<std::string, at::Tensor> tensors)
    : tensors_(std::move(tensors)) {
  TORCH_CHECK_VALUE(kv_dtype == at::kFloat || kv_dtype == at::kBFloat16,
                    "Engine: kv_dtype must be float32 or bfloat16, got ", kv_dtype);
  cpu::EngineSpec s;
  num_layers_ = read_config(s, config, "Engine");
  const int64_t num_layers = num_layers_;
  s.threads = static_cast<int>(config_get(config, "threads", "Engine"));
  s.format = parse_format(format);
  s.kv_dtype = kv_dtype == at::kFloat ? DType::Float32 : DType::BFloat16;
  kv_dtype_ = kv_dtype;
  {
    const at::Tensor& cs = tensor("cos_sin");
    TORCH_CHECK_VALUE(cs.scalar_type() == at::kFloat && cs.dim() == 2 && cs.size(0) >= s.max_seq &&
                          cs.size(1) == s.rot_dim,
                      "Engine: cos_sin must be float32 [>= ", s.max_seq, ", ", s.rot_dim, "], got ",
                      cs.scalar_type(), " ", cs.sizes());
    s.cos_sin = cs.data_ptr<float>();
  }
  const int64_t H = s.hidden;
  s.embed = matrix("embed", s.format);
  s.lm_head = matrix("lm_head", s.format);
  s.final_norm = vector("final_norm", H);
  for (int64_t l = 0; l < num_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    cpu::EngineLayer L;
    L.attn_norm = vector(p + "attn_norm", H);
    L.mlp_norm = vector(p + "mlp_norm", H);
    L.qkv = matrix(p + "qkv", s.format);
    L.o = matrix(p + "o", s.format);
    L.gate_up = matrix(p + "gate_up", s.format);
    L.down = matrix(p + "down", s.format);
    L.qkv_bias = vector(p + "qkv_bias", L.qkv.rows, /*optional=*/true);
    L.o_bias = vector(p + "o_bias", H, /*optional=*/true);
    s.layers.push_back(L);
  }
  try {
    engine_ = std::make_unique<cpu::Engine>(std::move(s));
  } catch (const InvalidArgument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}

void EngineHandle::forward(const at::Tensor& tokens, const at::Tensor& positions,
                           const at::Tensor& rows, at::Tensor& k_cache, at::Tensor& v_cache,
                           at::Tensor& logits, int64_t first_logit) {
  const cpu::EngineSpec& s = engine_->spec();
  const int64_t n = check_inputs(tokens, positions, rows, s.max_tokens, first_logit, "Engine");
  check_outputs(k_cache, v_cache, logits, s, num_layers_, kv_dtype_, at::Device(at::kCPU), n, first_logit,
                "Engine");
  std::lock_guard<std::mutex> guard(mutex_);
  try {
    engine_->forward(tokens.data_ptr<int64_t>(), positions.data_ptr<int64_t>(),
                     rows.data_ptr<int64_t>(), n, k_cache.data_ptr(), v_cache.data_ptr(),
                     k_cache.size(1), logits.data_ptr<float>(), first_logit);
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

#ifdef PYRUNTIME_WITH_CUDA
const void* CudaEngineHandle::weight(const std::string& name, std::vector<int64_t> shape, bool optional) {
  auto it = tensors_.find(name);
  if (optional && it == tensors_.end()) return nullptr;
  TORCH_CHECK_VALUE(it != tensors_.end(), "CudaEngine: tensor '", name, "' is missing");
  const at::Tensor& t = it->second;
  TORCH_CHECK_VALUE(t.device() == device_ && t.scalar_type() == dtype_ && t.is_contiguous() &&
                        t.sizes() == at::IntArrayRef(shape),
                    "CudaEngine: ", name, " must be a contiguous ", dtype_, " tensor ", at::IntArrayRef(shape),
                    " on ", device_, ", got ", t.scalar_type(), " ", t.sizes(), " on ", t.device());
  return t.data_ptr();
}

CudaEngineHandle::CudaEngineHandle(const std::map<std::string, double>& config, at::ScalarType dtype,
                                   std::map<std::string, at::Tensor> tensors)
    : tensors_(std::move(tensors)), dtype_(dtype) {
  TORCH_CHECK_VALUE(dtype == at::kBFloat16 || dtype == at::kHalf,
                    "CudaEngine: dtype must be bfloat16 or float16, got ", dtype);
  cuda::EngineSpec s;
  num_layers_ = read_config(s, config, "CudaEngine");
  s.dtype = dtype == at::kBFloat16 ? DType::BFloat16 : DType::Float16;
  auto cs = tensors_.find("cos_sin");
  TORCH_CHECK_VALUE(cs != tensors_.end(), "CudaEngine: tensor 'cos_sin' is missing");
  device_ = cs->second.device();
  TORCH_CHECK_VALUE(device_.is_cuda(), "CudaEngine: cos_sin must be on a CUDA device, got ", device_);
  TORCH_CHECK_VALUE(cs->second.scalar_type() == at::kFloat && cs->second.is_contiguous() && cs->second.dim() == 2 &&
                        cs->second.size(0) >= s.max_seq && cs->second.size(1) == s.rot_dim,
                    "CudaEngine: cos_sin must be contiguous float32 [>= ", s.max_seq, ", ", s.rot_dim, "], got ",
                    cs->second.scalar_type(), " ", cs->second.sizes());
  s.cos_sin = cs->second.data_ptr<float>();
  s.device = device_.index();
  const int64_t H = s.hidden, I = s.inter, qkv = (s.num_heads + 2 * s.num_kv_heads) * s.head_dim;
  s.embed = weight("embed", {s.vocab, H});
  s.lm_head = weight("lm_head", {s.vocab, H});
  s.final_norm = weight("final_norm", {H});
  for (int64_t l = 0; l < num_layers_; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    cuda::EngineLayer L;
    L.attn_norm = weight(p + "attn_norm", {H});
    L.mlp_norm = weight(p + "mlp_norm", {H});
    L.qkv = weight(p + "qkv", {qkv, H});
    L.qkv_bias = weight(p + "qkv_bias", {qkv}, /*optional=*/true);
    L.o = weight(p + "o", {H, s.num_heads * s.head_dim});
    L.o_bias = weight(p + "o_bias", {H}, /*optional=*/true);
    L.gate_up = weight(p + "gate_up", {2 * I, H});
    L.down = weight(p + "down", {H, I});
    s.layers.push_back(L);
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
  check_outputs(k_cache, v_cache, logits, s, num_layers_, dtype_, device_, n, first_logit, "CudaEngine");
  const c10::cuda::CUDAGuard device_guard(device_);
  std::lock_guard<std::mutex> guard(mutex_);
  try {
    engine_->forward(tokens.data_ptr<int64_t>(), positions.data_ptr<int64_t>(), rows.data_ptr<int64_t>(), n,
                     k_cache.data_ptr(), v_cache.data_ptr(), k_cache.size(1), logits.data_ptr<float>(), first_logit,
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
