// The CPU engine's public face: the spec checked once, here, then the step of the active
// instruction-set level (csrc/cpu/engine.cpp, compiled per level) built and called.
#include <cmath>
#include <string>

#include "engine_impl.h"
#include "pyruntime/cpu_kernels.h"
#include "pyruntime/engine.h"
#include "pyruntime/engine_shape.h"

namespace pyruntime::cpu {

namespace {

const FormatInfo& info(WeightFormat f) {
  const auto i = static_cast<size_t>(f);
  PYRUNTIME_CHECK(i < static_cast<size_t>(kNumFormats), "unknown weight format " + std::to_string(i));
  return kFormats[i];
}

}  // namespace

const char* weight_format_name(WeightFormat f) {
  const auto i = static_cast<size_t>(f);
  return i < static_cast<size_t>(kNumFormats) ? kFormats[i].name : "unknown";
}
int64_t format_block_values(WeightFormat f) { return info(f).block_values; }
int64_t format_block_bytes(WeightFormat f) { return info(f).block_bytes; }

Matrix Matrix::rows_view(int64_t r0, int64_t n) const {
  PYRUNTIME_CHECK(r0 >= 0 && n > 0 && r0 + n <= rows && r0 % block_rows == 0 && n % block_rows == 0,
                  "Matrix::rows_view: rows [" + std::to_string(r0) + ", " + std::to_string(r0 + n) +
                      ") of " + std::to_string(rows) + " in blocks of " + std::to_string(block_rows));
  Matrix m = *this;
  m.rows = n;
  m.data = static_cast<const char*>(data) + r0 * format_row_bytes(format, cols);
  if (scales) m.scales = scales + r0 * (cols / group);
  return m;
}

const char* activation_name(Activation a) {
  switch (a) {
    case Activation::SiLU: return "silu";
    case Activation::GeluTanh: return "gelu_tanh";
  }
  return "unknown";
}

const char* op_name(Op op) {
  static const char* names[] = {"embed",     "attn_norm",  "qkv_proj", "rope_kv_cache",
                                "attention", "o_proj",     "mlp_norm", "gate_up_silu",
                                "down_proj", "final_norm", "lm_head"};
  const int i = static_cast<int>(op);
  return i >= 0 && i < static_cast<int>(Op::Count) ? names[i] : "unknown";
}

namespace {

void check_matrix(const Matrix& m, int64_t rows, int64_t cols, const std::string& name) {
  PYRUNTIME_CHECK(m.data != nullptr, "engine: " + name + " is missing");
  PYRUNTIME_CHECK(m.rows == rows && m.cols == cols,
                  "engine: " + name + " must be [" + std::to_string(rows) + ", " +
                      std::to_string(cols) + "], got [" + std::to_string(m.rows) + ", " +
                      std::to_string(m.cols) + "]");
  const int64_t block = format_block_values(m.format);
  PYRUNTIME_CHECK(cols % block == 0, "engine: " + name + " (" + weight_format_name(m.format) + ") has " +
                                         std::to_string(cols) + " columns, not a multiple of its block of " +
                                         std::to_string(block));
  if (m.format == WeightFormat::Int8) {
    PYRUNTIME_CHECK(m.scales != nullptr, "engine: " + name + " (int8) has no scales");
    PYRUNTIME_CHECK(m.group >= 16 && (m.group & (m.group - 1)) == 0 && cols % m.group == 0,
                    "engine: " + name + " group size " + std::to_string(m.group) +
                        " must be a power of two >= 16 dividing " + std::to_string(cols));
    PYRUNTIME_CHECK((m.block_rows == 1 || m.block_rows == kInt8BlockRows) && rows % m.block_rows == 0,
                    "engine: " + name + " block_rows " + std::to_string(m.block_rows) + " must be 1 or " +
                        std::to_string(kInt8BlockRows) + " dividing " + std::to_string(rows) + " rows");
  }
}

}  // namespace

Engine::Engine(EngineSpec s) {
  const int64_t H = s.hidden;
  check_engine_shape(s, "engine");
  PYRUNTIME_CHECK(s.kv_dtype == DType::Float32 || s.kv_dtype == DType::BFloat16,
                  "engine: kv_dtype must be float32 or bfloat16");
  PYRUNTIME_CHECK(s.cos_sin && s.final_norm, "engine: cos_sin and final_norm are required");
  PYRUNTIME_CHECK(!s.layers.empty(), "engine: no layers");
#define PYRUNTIME_CHECK_FEATURE(type, name, off, valid, requirement) \
  {                                                                  \
    const type v = s.name;                                           \
    PYRUNTIME_CHECK(valid, "engine: " #name " must be " requirement); \
  }
  PYRUNTIME_MODEL_FEATURES(PYRUNTIME_CHECK_FEATURE)
#undef PYRUNTIME_CHECK_FEATURE
  PYRUNTIME_CHECK(s.prompt_bits == 8 || s.prompt_bits == 16 || s.prompt_bits == 32,
                  "engine: prompt_bits must be 8, 16 or 32, got " + std::to_string(s.prompt_bits));
  const LayerDims dims = layer_dims(H, s.inter, s.num_heads, s.num_kv_heads, s.head_dim);
  check_matrix(s.embed, s.vocab, H, "embed");
  check_matrix(s.lm_head, s.vocab, H, "lm_head");
  for (size_t l = 0; l < s.layers.size(); ++l) {
    const EngineLayer& L = s.layers[l];
    const std::string p = "layers[" + std::to_string(l) + "].";
#define PYRUNTIME_CHECK_MATRIX(name, rows, cols) check_matrix(L.name, dims.rows, dims.cols, p + #name);
#define PYRUNTIME_CHECK_VECTOR(name, size) PYRUNTIME_CHECK(L.name, "engine: " + p + #name " is missing");
#define PYRUNTIME_CHECK_COUNT(name) \
  PYRUNTIME_CHECK(L.name >= 0, "engine: " + p + #name " must be >= 0, got " + std::to_string(L.name));
    PYRUNTIME_LAYER_MATRICES(PYRUNTIME_CHECK_MATRIX)
    PYRUNTIME_LAYER_VECTORS(PYRUNTIME_CHECK_VECTOR)
    PYRUNTIME_LAYER_COUNTS(PYRUNTIME_CHECK_COUNT)
#undef PYRUNTIME_CHECK_MATRIX
#undef PYRUNTIME_CHECK_VECTOR
#undef PYRUNTIME_CHECK_COUNT
    PYRUNTIME_CHECK(!L.q_norm == !L.k_norm, "engine: " + p + "q_norm and k_norm come together");
  }
  switch (active_isa()) {
#define PYRUNTIME_ENGINE_CASE(E, ns) \
  case Isa::E: impl_ = ns::make_engine_impl(std::move(s)); break;
    PYRUNTIME_FOR_EACH_ISA(PYRUNTIME_ENGINE_CASE)
#undef PYRUNTIME_ENGINE_CASE
    case Isa::Count: break;
  }
  PYRUNTIME_CHECK(impl_ != nullptr, "engine: no kernels for the active instruction set");
}

Engine::~Engine() = default;

void Engine::forward(const int64_t* tokens, const int64_t* positions, const int64_t* rows, int64_t n,
                     void* k_cache, void* v_cache, int64_t cache_rows, float* logits,
                     int64_t first_logit, bool prompt, const int64_t* logit_tokens) {
  const EngineSpec& s = impl_->spec;
  PYRUNTIME_CHECK(k_cache && v_cache && (logits || first_logit == n), "engine.forward: null cache or logits");
  check_forward_args(s, tokens, positions, rows, n, cache_rows, first_logit, "engine");
  if (logit_tokens)
    for (int64_t j = 0; j < n - first_logit; ++j)
      PYRUNTIME_CHECK(logit_tokens[j] >= (j ? logit_tokens[j - 1] + 1 : 0) && logit_tokens[j] < n,
                      "engine.forward: logit_tokens must be ascending token indices in [0, " + std::to_string(n) +
                          "), got logit_tokens[" + std::to_string(j) + "] = " + std::to_string(logit_tokens[j]));
  impl_->run(tokens, positions, rows, n, k_cache, v_cache, cache_rows, logits, first_logit, prompt, logit_tokens);
}

void matrix_product(float* y, const float* x, int64_t tokens, const Matrix& m, bool int8_activations,
                    int gemm_bits) {
  switch (active_isa()) {
#define PYRUNTIME_PRODUCT_CASE(E, ns) \
  case Isa::E: return ns::matrix_product(y, x, tokens, m, int8_activations, gemm_bits);
    PYRUNTIME_FOR_EACH_ISA(PYRUNTIME_PRODUCT_CASE)
#undef PYRUNTIME_PRODUCT_CASE
    case Isa::Count: break;
  }
}

namespace {
// prompt_bits_run (csrc/cpu/gemm_q8.h) of the given level: the bits a prompt asking for
// `asked` runs with there.
int prompt_bits_at(Isa isa, int asked) {
  switch (isa) {
#define PYRUNTIME_PROMPT_BITS_CASE(E, ns) \
  case Isa::E: return ns::prompt_bits_run(asked);
    PYRUNTIME_FOR_EACH_ISA(PYRUNTIME_PROMPT_BITS_CASE)
#undef PYRUNTIME_PROMPT_BITS_CASE
    case Isa::Count: break;
  }
  return 32;
}
}  // namespace

bool q8_prompt_products() { return prompt_bits_at(active_isa(), 8) == 8; }
bool q16_prompt_products() { return prompt_bits_at(active_isa(), 16) == 16; }

const EngineSpec& Engine::spec() const { return impl_->spec; }
int Engine::prompt_bits() const { return prompt_bits_at(impl_->isa, impl_->spec.prompt_bits); }
void Engine::set_prompt_bits(int bits) {
  PYRUNTIME_CHECK(bits == 8 || bits == 16 || bits == 32,
                  "engine: prompt_bits must be 8, 16 or 32, got " + std::to_string(bits));
  impl_->spec.prompt_bits = bits;
}
int64_t Engine::layer_slots(int layer) const {
  PYRUNTIME_CHECK(layer >= 0 && layer < static_cast<int>(impl_->slots.size()),
                  "engine.layer_slots: layer " + std::to_string(layer) + " is outside [0, " +
                      std::to_string(impl_->slots.size()) + ")");
  return impl_->slots[layer];
}
int64_t Engine::cache_row_elements() const {
  const EngineSpec& s = impl_->spec;
  return s.num_kv_heads * s.head_dim * (impl_->slot_offsets.back() + impl_->slots.back());
}
int Engine::threads() const { return impl_->threads; }
Isa Engine::isa() const { return impl_->isa; }
void Engine::set_profiling(bool on) {
  if (on && !impl_->profiling) {
    impl_->events.clear();
    impl_->calls = 0;
  }
  impl_->profiling = on;
}
const std::vector<ProfileEvent>& Engine::profile() const { return impl_->events; }

}  // namespace pyruntime::cpu
