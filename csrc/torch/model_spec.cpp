#include "model_spec.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

namespace pyruntime {

at::ScalarType storage_type(WeightFormat f) {
  switch (f) {
    case WeightFormat::Float32: return at::kFloat;
    case WeightFormat::BFloat16: return at::kBFloat16;
    case WeightFormat::Int8: return at::kChar;
    default: return at::kByte;
  }
}

std::vector<WeightFormat> all_weight_formats() {
  // Every WeightFormat, from the one table of formats (engine_spec.cpp), which names no others.
  std::vector<WeightFormat> all;
  for (int i = 0; std::string(cpu::weight_format_name(static_cast<WeightFormat>(i))) != "unknown"; ++i)
    all.push_back(static_cast<WeightFormat>(i));
  return all;
}

WeightMatrix::WeightMatrix(WeightFormat f, at::Tensor d, std::optional<at::Tensor> s)
    : format(f), data(std::move(d)), scales(std::move(s)) {
  const char* name = cpu::weight_format_name(f);
  TORCH_CHECK_VALUE(data.scalar_type() == storage_type(f) && data.is_contiguous(), "WeightMatrix: ", name,
                    " data must be a contiguous ", storage_type(f), " tensor, got ", data.scalar_type(), " ",
                    data.sizes());
  if (storage_type(f) == at::kByte) {  // GGUF blocks: [rows, whole blocks' bytes]
    TORCH_CHECK_VALUE(!scales.has_value(), "WeightMatrix: ", name, " data takes no scales (they are in its blocks)");
    const int64_t bb = cpu::format_block_bytes(f);
    TORCH_CHECK_VALUE(data.dim() == 2 && data.size(0) > 0 && data.size(1) > 0 && data.size(1) % bb == 0,
                      "WeightMatrix: ", name, " data must be [rows, row bytes] with whole blocks of ", bb,
                      " bytes, got ", data.sizes());
    rows = data.size(0);
    cols = data.size(1) / bb * cpu::format_block_values(f);
    return;
  }
  if (f != WeightFormat::Int8) {
    TORCH_CHECK_VALUE(!scales.has_value(), "WeightMatrix: ", name, " data takes no scales");
    TORCH_CHECK_VALUE(data.dim() == 2 && data.size(0) > 0 && data.size(1) > 0, "WeightMatrix: ", name,
                      " data must be [rows, cols], got ", data.sizes());
    rows = data.size(0);
    cols = data.size(1);
    return;
  }
  TORCH_CHECK_VALUE(scales.has_value(), "WeightMatrix: int8 data needs its scales");
  const at::Tensor& sc = *scales;
  TORCH_CHECK_VALUE(sc.scalar_type() == at::kFloat && sc.is_contiguous() && sc.device() == data.device(),
                    "WeightMatrix: int8 scales must be a contiguous float32 tensor on ", data.device(), ", got ",
                    sc.scalar_type(), " ", sc.sizes(), " on ", sc.device());
  constexpr int64_t B = cpu::kInt8BlockRows;
  if (data.dim() == 4) {
    TORCH_CHECK_VALUE(data.size(2) == B && sc.dim() == 3 && sc.sizes() == data.sizes().slice(0, 3) &&
                          data.numel() > 0,
                      "WeightMatrix: int8 rows in blocks must be data [rows / ", B, ", groups, ", B,
                      ", group] with scales [rows / ", B, ", groups, ", B, "], got ", data.sizes(), " and ",
                      sc.sizes());
    rows = data.size(0) * B;
    cols = data.size(1) * data.size(3);
    group = data.size(3);
    block_rows = B;
    return;
  }
  TORCH_CHECK_VALUE(data.dim() == 2 && data.numel() > 0 && sc.dim() == 2 && sc.size(0) == data.size(0) &&
                        sc.size(1) > 0 && data.size(1) % sc.size(1) == 0,
                    "WeightMatrix: int8 data must be [rows, cols] with scales [rows, groups], groups dividing "
                    "cols (or rows in blocks: 4-D), got ",
                    data.sizes(), " and ", sc.sizes());
  rows = data.size(0);
  cols = data.size(1);
  group = cols / sc.size(1);
}

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

at::Tensor matrix_product(const at::Tensor& x, const WeightMatrix& m, bool int8_activations, int64_t gemm_bits) {
  TORCH_CHECK_VALUE(m.data.device().is_cpu(), "matrix_product: the matrix must be on the cpu");
  TORCH_CHECK_VALUE(gemm_bits == 16 || gemm_bits == 32, "matrix_product: gemm_bits must be 16 or 32, got ", gemm_bits);
  TORCH_CHECK_VALUE(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 2 && x.size(1) == m.cols,
                    "matrix_product: x must be a float32 cpu [tokens, ", m.cols, "] tensor, got ", x.scalar_type(),
                    " ", x.sizes(), " on ", x.device());
  TORCH_CHECK_VALUE(x.size(0) > 0, "matrix_product: x has no tokens");
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty({x.size(0), m.rows}, x.options());
  cpu::matrix_product(y.data_ptr<float>(), xc.data_ptr<float>(), x.size(0), m.view(), int8_activations,
                      static_cast<int>(gemm_bits));
  return y;
}

int64_t WeightMatrix::nbytes() const {
  return static_cast<int64_t>(data.nbytes()) + (scales ? static_cast<int64_t>(scales->nbytes()) : 0);
}

cpu::Matrix WeightMatrix::view() const {
  cpu::Matrix m;
  m.format = format;
  m.data = data.data_ptr();
  m.scales = scales ? scales->data_ptr<float>() : nullptr;
  m.rows = rows;
  m.cols = cols;
  m.group = group;
  m.block_rows = block_rows;
  return m;
}

std::string WeightMatrix::repr() const {
  std::ostringstream s;
  s << "WeightMatrix(" << cpu::weight_format_name(format) << " [" << rows << ", " << cols << "]";
  if (format == WeightFormat::Int8) s << ", group " << group << ", block_rows " << block_rows;
  s << ", " << data.device() << ")";
  return s.str();
}

namespace {

struct Checker {
  const std::string& owner;
  at::Device device;
  at::ScalarType vector_dtype;
  const std::vector<WeightFormat>& formats;

  void matrix(const WeightMatrix& m, int64_t rows, int64_t cols, const std::string& name) const {
    TORCH_CHECK_VALUE(m.data.defined(), owner, ": ", name, " is missing");
    TORCH_CHECK_VALUE(m.rows == rows && m.cols == cols, owner, ": ", name, " must be [", rows, ", ", cols,
                      "], got ", m.repr());
    TORCH_CHECK_VALUE(m.device() == device, owner, ": ", name, " is on ", m.device(), ", the embedding on ",
                      device);
    TORCH_CHECK_VALUE(std::find(formats.begin(), formats.end(), m.format) != formats.end(), owner, ": ", name,
                      " is ", cpu::weight_format_name(m.format), ", which this engine does not run");
  }
  void vector(const at::Tensor& t, int64_t size, const std::string& name) const {
    TORCH_CHECK_VALUE(t.defined(), owner, ": ", name, " is missing");
    TORCH_CHECK_VALUE(t.device() == device && t.scalar_type() == vector_dtype && t.is_contiguous() &&
                          t.dim() == 1 && t.size(0) == size,
                      owner, ": ", name, " must be a contiguous ", vector_dtype, " vector [", size, "] on ",
                      device, ", got ", t.scalar_type(), " ", t.sizes(), " on ", t.device());
  }
};

std::string feature_repr(float v) { return c10::str(v); }
std::string feature_repr(Activation a) { return cpu::activation_name(a); }

}  // namespace

void ModelSpec::check(const std::string& owner, at::ScalarType vector_dtype,
                      const std::vector<WeightFormat>& formats) const {
  TORCH_CHECK_VALUE(hidden > 0 && inter > 0 && vocab > 0 && num_heads > 0 && num_kv_heads > 0 && head_dim > 0,
                    owner, ": hidden, inter, vocab, num_heads, num_kv_heads and head_dim must be positive");
  TORCH_CHECK_VALUE(num_heads % num_kv_heads == 0, owner, ": num_heads (", num_heads,
                    ") must be a multiple of num_kv_heads (", num_kv_heads, ")");
  TORCH_CHECK_VALUE(!layers.empty(), owner, ": the model has no layers");
  TORCH_CHECK_VALUE(embed.data.defined(), owner, ": embed is missing");
  const Checker c{owner, embed.device(), vector_dtype, formats};
  const int64_t H = hidden;
  c.matrix(embed, vocab, H, "embed");
  c.matrix(lm_head, vocab, H, "lm_head");
  c.vector(final_norm, H, "final_norm");
  TORCH_CHECK_VALUE(rope_cos_sin.defined() && rope_cos_sin.device() == c.device &&
                        rope_cos_sin.scalar_type() == at::kFloat && rope_cos_sin.is_contiguous() &&
                        rope_cos_sin.dim() == 2 && rope_cos_sin.size(1) == rotary_dim,
                    owner, ": rope_cos_sin must be a contiguous float32 [positions, ", rotary_dim, "] tensor on ",
                    c.device);
  const LayerDims dims = layer_dims(H, inter, num_heads, num_kv_heads, head_dim);
  for (int64_t l = 0; l < num_layers(); ++l) {
    const LayerSpec& L = layers[l];
    const std::string p = "layers[" + std::to_string(l) + "].";
#define PYRUNTIME_CHECK_MATRIX(name, rows, cols) c.matrix(L.name, dims.rows, dims.cols, p + #name);
#define PYRUNTIME_CHECK_VECTOR(name, size) c.vector(L.name, dims.size, p + #name);
#define PYRUNTIME_CHECK_OPTIONAL(name, size) \
  if (L.name) c.vector(*L.name, dims.size, p + #name);
#define PYRUNTIME_CHECK_COUNT(name) \
  TORCH_CHECK_VALUE(L.name >= 0, owner, ": ", p, #name " must be >= 0, got ", L.name);
#define PYRUNTIME_CHECK_TABLE(name)                                                                         \
  if (L.name)                                                                                               \
    TORCH_CHECK_VALUE(L.name->device() == c.device && L.name->scalar_type() == at::kFloat &&                \
                          L.name->is_contiguous() && L.name->sizes() == rope_cos_sin.sizes(),               \
                      owner, ": ", p, #name " must be a contiguous float32 tensor shaped as the model's ", \
                      rope_cos_sin.sizes(), " on ", c.device, ", got ", L.name->scalar_type(), " ",        \
                      L.name->sizes(), " on ", L.name->device());
    PYRUNTIME_LAYER_MATRICES(PYRUNTIME_CHECK_MATRIX)
    PYRUNTIME_LAYER_VECTORS(PYRUNTIME_CHECK_VECTOR)
    PYRUNTIME_LAYER_OPTIONAL_VECTORS(PYRUNTIME_CHECK_OPTIONAL)
    PYRUNTIME_LAYER_COUNTS(PYRUNTIME_CHECK_COUNT)
    PYRUNTIME_LAYER_TABLES(PYRUNTIME_CHECK_TABLE)
#undef PYRUNTIME_CHECK_MATRIX
#undef PYRUNTIME_CHECK_VECTOR
#undef PYRUNTIME_CHECK_OPTIONAL
#undef PYRUNTIME_CHECK_COUNT
#undef PYRUNTIME_CHECK_TABLE
    TORCH_CHECK_VALUE(L.q_norm.has_value() == L.k_norm.has_value(), owner, ": ", p,
                      "q_norm and k_norm come together (qk-norm), got only one");
  }
#define PYRUNTIME_CHECK_FEATURE(type, name, off, valid, requirement)                          \
  {                                                                                           \
    const type v = name;                                                                      \
    TORCH_CHECK_VALUE(valid, owner, ": " #name " must be " requirement ", got ", feature_repr(v)); \
  }
  PYRUNTIME_MODEL_FEATURES(PYRUNTIME_CHECK_FEATURE)
#undef PYRUNTIME_CHECK_FEATURE
}

int64_t ModelSpec::nbytes() const {
  std::set<const void*> seen;
  int64_t total = 0;
  auto add = [&](const at::Tensor& t) {
    if (t.defined() && seen.insert(t.data_ptr()).second) total += static_cast<int64_t>(t.nbytes());
  };
  auto add_matrix = [&](const WeightMatrix& m) {
    add(m.data);
    if (m.scales) add(*m.scales);
  };
  add_matrix(embed);
  add_matrix(lm_head);
  add(final_norm);
  for (const LayerSpec& L : layers) {
#define PYRUNTIME_ADD_MATRIX(name, rows, cols) add_matrix(L.name);
#define PYRUNTIME_ADD_VECTOR(name, size) add(L.name);
#define PYRUNTIME_ADD_OPTIONAL(name, size) \
  if (L.name) add(*L.name);
    PYRUNTIME_LAYER_MATRICES(PYRUNTIME_ADD_MATRIX)
    PYRUNTIME_LAYER_VECTORS(PYRUNTIME_ADD_VECTOR)
    PYRUNTIME_LAYER_OPTIONAL_VECTORS(PYRUNTIME_ADD_OPTIONAL)
#undef PYRUNTIME_ADD_MATRIX
#undef PYRUNTIME_ADD_VECTOR
#undef PYRUNTIME_ADD_OPTIONAL
  }
  return total;
}

cpu::EngineLayer LayerSpec::view() const {
  cpu::EngineLayer e;
  const auto ptr = [](const std::optional<at::Tensor>& t) { return t ? t->data_ptr<float>() : nullptr; };
#define PYRUNTIME_VIEW_MATRIX(name, rows, cols) e.name = name.view();
#define PYRUNTIME_VIEW_VECTOR(name, size) e.name = name.data_ptr<float>();
#define PYRUNTIME_VIEW_OPTIONAL(name, ...) e.name = ptr(name);
#define PYRUNTIME_VIEW_COUNT(name) e.name = name;
  PYRUNTIME_LAYER_MATRICES(PYRUNTIME_VIEW_MATRIX)
  PYRUNTIME_LAYER_VECTORS(PYRUNTIME_VIEW_VECTOR)
  PYRUNTIME_LAYER_OPTIONAL_VECTORS(PYRUNTIME_VIEW_OPTIONAL)
  PYRUNTIME_LAYER_TABLES(PYRUNTIME_VIEW_OPTIONAL)
  PYRUNTIME_LAYER_COUNTS(PYRUNTIME_VIEW_COUNT)
#undef PYRUNTIME_VIEW_MATRIX
#undef PYRUNTIME_VIEW_VECTOR
#undef PYRUNTIME_VIEW_OPTIONAL
#undef PYRUNTIME_VIEW_COUNT
  return e;
}

std::vector<std::string> LayerSpec::present_optionals() const {
  std::vector<std::string> out;
#define PYRUNTIME_PRESENT(name, ...) \
  if (name) out.push_back(#name);
  PYRUNTIME_LAYER_OPTIONAL_VECTORS(PYRUNTIME_PRESENT)
  PYRUNTIME_LAYER_TABLES(PYRUNTIME_PRESENT)
#undef PYRUNTIME_PRESENT
#define PYRUNTIME_PRESENT_COUNT(name) \
  if (name != 0) out.push_back(#name);
  PYRUNTIME_LAYER_COUNTS(PYRUNTIME_PRESENT_COUNT)
#undef PYRUNTIME_PRESENT_COUNT
  return out;
}

}  // namespace pyruntime
