// Op registration: schemas once, implementations per backend. Outputs come first and
// are marked mutable (Tensor!).
#include <torch/extension.h>
#include <torch/library.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "engine.h"
#include "model_spec.h"
#include "ops.h"
#include "pyruntime/cpu_kernels.h"
#include "pyruntime/dispatch.h"

TORCH_LIBRARY(pyruntime, m) {
  m.def("rms_norm(Tensor! out, Tensor x, Tensor weight, float eps) -> ()");
  m.def("fused_add_rms_norm(Tensor! x, Tensor! residual, Tensor weight, float eps) -> ()");
  m.def("rotary_embedding(Tensor positions, Tensor! q, Tensor! k, Tensor cos_sin_cache, "
        "bool is_neox) -> ()");
  m.def("rotary_embedding_and_cache(Tensor positions, Tensor! q, Tensor! k, Tensor v, "
        "Tensor! k_cache, Tensor! v_cache, Tensor cos_sin_cache, bool is_neox) -> ()");
  m.def("silu_and_mul(Tensor! out, Tensor x) -> ()");
  m.def("linear(Tensor! out, Tensor x, Tensor weight) -> ()");
  m.def("gated_mlp(Tensor! out, Tensor x, Tensor gate_up_weight, Tensor down_weight) -> ()");
  m.def("gqa_decode_attention(Tensor! out, Tensor q, Tensor k_cache, Tensor v_cache, "
        "Tensor seq_lens, float scale) -> ()");
  m.def("prefill_attention(Tensor! out, Tensor q, Tensor k_cache, Tensor v_cache, int start_pos, "
        "float scale) -> ()");
}

#define PYRUNTIME_REGISTER_IMPLS(m)                                         \
  m.impl("rms_norm", &pyruntime::rms_norm);                                 \
  m.impl("fused_add_rms_norm", &pyruntime::fused_add_rms_norm);             \
  m.impl("rotary_embedding", &pyruntime::rotary_embedding);                 \
  m.impl("rotary_embedding_and_cache", &pyruntime::rotary_embedding_and_cache); \
  m.impl("silu_and_mul", &pyruntime::silu_and_mul);                         \
  m.impl("linear", &pyruntime::linear);                                     \
  m.impl("gated_mlp", &pyruntime::gated_mlp);                               \
  m.impl("gqa_decode_attention", &pyruntime::gqa_decode_attention);

TORCH_LIBRARY_IMPL(pyruntime, CPU, m) {
  PYRUNTIME_REGISTER_IMPLS(m)
  m.impl("prefill_attention", &pyruntime::prefill_attention);
}
#ifdef PYRUNTIME_WITH_CUDA
TORCH_LIBRARY_IMPL(pyruntime, CUDA, m) { PYRUNTIME_REGISTER_IMPLS(m) }
#endif

namespace py = pybind11;

namespace {

// How a spec's constructor takes an attribute: it must be given; it may be left out or None (an
// optional tensor: absent); it may be left out (a count or a feature: its default), not None.
enum class Given { Required, NoneIsAbsent, Defaulted };

// A spec's constructor takes its attributes by keyword: this one out of kw, cast to the field's
// type (TypeError naming it where it is missing as `given` requires, or does not cast).
template <typename T>
void take_attribute(py::dict& kw, const char* owner, const char* name, T& field, Given given) {
  const bool present = kw.contains(name);
  py::object v = present ? kw.attr("pop")(name) : py::none();
  if (!present && given != Given::Required) return;
  if (v.is_none() && given == Given::NoneIsAbsent) return;
  if (v.is_none() && given == Given::Required) throw py::type_error(std::string(owner) + ": " + name + " is required");
  try {
    field = v.cast<T>();
  } catch (const py::cast_error&) {
    throw py::type_error(std::string(owner) + ": " + name + " got a " +
                         py::str(py::type::of(v).attr("__name__")).cast<std::string>());
  }
}

// What is left in kw after every attribute was taken.
void refuse_unknown(const py::dict& kw, const char* owner, const char* hint) {
  if (!kw.empty())
    throw py::type_error(std::string(owner) + ": unknown attribute(s) " +
                         py::str(kw.attr("keys")()).cast<std::string>() + " (" + hint + ")");
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "pyruntime compiled kernels (ops are under torch.ops.pyruntime)";
  m.def("cpu_isa", [] { return std::string(pyruntime::cpu::isa_name(pyruntime::cpu::active_isa())); },
        "instruction-set level of the CPU kernels that run now");
  m.def("cpu_isa_levels", [] {
    std::vector<std::string> names;
    for (int i = 0; i < static_cast<int>(pyruntime::cpu::Isa::Count); ++i)
      names.emplace_back(pyruntime::cpu::isa_name(static_cast<pyruntime::cpu::Isa>(i)));
    return names;
  }, "every instruction-set level compiled in, lowest first");
  m.def("set_cpu_isa", [](const std::string& name) {
    pyruntime::cpu::set_active_isa(pyruntime::cpu::parse_isa(name));
  }, pybind11::arg("name"), "run later CPU kernels (and engines built later) at this level");
  m.def("cpu_isa_missing_features", [](const std::string& name) {
    return pyruntime::cpu::isa_missing_features(pyruntime::cpu::parse_isa(name));
  }, pybind11::arg("name"), "the CPU features a level needs that this CPU lacks ('' when it runs here)");
  m.def("best_cpu_isa", [] { return std::string(pyruntime::cpu::isa_name(pyruntime::cpu::best_isa())); },
        "the highest level this CPU runs");
  m.def("cpu_features", [] {
    const pyruntime::cpu::CpuFeatures& f = pyruntime::cpu::cpu_features();
    const pyruntime::cpu::KernelPaths p = pyruntime::cpu::kernel_paths();
    return std::map<std::string, bool>{
        {"avx2", f.avx2}, {"fma", f.fma}, {"f16c", f.f16c}, {"avx512f", f.avx512f}, {"avx512bw", f.avx512bw},
        {"avx512vl", f.avx512vl}, {"avx512dq", f.avx512dq}, {"avx512_bf16", f.avx512bf16},
        {"avx512_vnni", f.avx512vnni}, {"amx_tile", f.amx_tile}, {"amx_bf16", f.amx_bf16},
        {"int8_vnni_path", p.int8_vnni}, {"bf16_amx_path", p.bf16_amx}};
  }, "what cpuid reports, and the special product paths the active level takes");
  m.def("q8_decode_rows", &pyruntime::cpu::q8_decode_rows,
        "weight rows one token's integer decode product reads at once (1: row after row, 4: side by side)");
  m.def("set_q8_decode_rows", &pyruntime::cpu::set_q8_decode_rows, pybind11::arg("rows"),
        "1 or 4 for later products (0 restores the default); each row's sums are the same bits either way");
  m.def("measure_fma_gflops", &pyruntime::cpu::measure_fma_gflops,
        pybind11::call_guard<pybind11::gil_scoped_release>(),
        "float32 multiply-adds per second over all kernel threads, G/s");
  m.def("supported_head_dims", [] {
#define PYRUNTIME_HEAD_DIM_ITEM(D) D,
    return std::vector<int>{PYRUNTIME_FOR_EACH_HEAD_DIM(PYRUNTIME_HEAD_DIM_ITEM)};
#undef PYRUNTIME_HEAD_DIM_ITEM
  }, "head sizes the attention kernels are compiled for");
  m.attr("max_row_tile_tokens") = pyruntime::cpu::kMaxRowTileTokens;
  m.attr("prompt_gemm_tokens") = pyruntime::cpu::kPromptGemmTokens;
  m.def("cpu_num_threads", &pyruntime::cpu::num_threads);
  m.def("measure_read_bandwidth_gbps", &pyruntime::cpu::measure_read_bandwidth_gbps,
        pybind11::arg("bytes") = int64_t(1) << 30, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "read bandwidth of this machine now (all kernel threads), GB/s");
  m.def("set_cpu_num_threads", &pyruntime::cpu::set_num_threads, "0 restores the default");
  m.def("release_openmp_threads", &pyruntime::cpu::release_openmp_threads,
        "release the OpenMP worker threads the calling thread started (before another thread runs the engine)");
  m.def("streaming_store_threshold", &pyruntime::cpu::streaming_store_threshold,
        "bytes per call from which CPU kernels write their outputs with streaming stores");
  m.def("set_streaming_store_threshold", &pyruntime::cpu::set_streaming_store_threshold, pybind11::arg("bytes"),
        "0 streams always, -1 restores the default (3/4 of the last-level cache)");
  namespace py = pybind11;
  m.def("quantize_int8", &pyruntime::quantize_int8, py::arg("w"), py::arg("group"),
        "int8 weight-only quantisation (absmax / 127 per group): (q, scales)");
  m.def("int8_group_size", &pyruntime::int8_group_size, py::arg("cols"));
  m.def("matrix_product", &pyruntime::matrix_product, py::arg("x"), py::arg("m"), py::arg("int8_activations"),
        py::arg("gemm_bits") = 32,
        "x [tokens, cols] times m^T through the CPU engine's products at the active level");
  m.def("int8_prompt_products", &pyruntime::cpu::q8_prompt_products,
        "whether the active level has the integer GEMM with 8-bit activations (against the block formats with "
        "integer products): AVX2, and AVX512-VNNI without AMX");
  m.def("int16_prompt_products", &pyruntime::cpu::q16_prompt_products,
        "whether the active level has the integer GEMM with 16-bit activations: AVX512-VNNI without AMX");
  m.def("format_activation_group",
        [](pyruntime::cpu::WeightFormat f) {
          const int i = static_cast<int>(f);
          TORCH_CHECK_VALUE(i >= 0 && i < pyruntime::cpu::kNumFormats, "format_activation_group: unknown format ", i);
          return pyruntime::cpu::format_activation_group(f);
        },
        py::arg("format"),
        "values per group of 8-bit activations in the format's integer products (0: float32 activations)");
  m.def("pack_int8_rows", &pyruntime::pack_int8_rows, py::arg("q"), py::arg("scales"),
        "quantize_int8's rows interleaved in blocks of 4: (q [rows / 4, groups, 4, group], scales [rows / 4, groups, 4])");
  using pyruntime::LayerSpec;
  using pyruntime::ModelSpec;
  using pyruntime::WeightMatrix;
  using OptTensor = std::optional<at::Tensor>;
  py::enum_<pyruntime::cpu::WeightFormat> formats(m, "WeightFormat", "how a weight matrix is stored");
  for (pyruntime::cpu::WeightFormat f : pyruntime::all_weight_formats())
    formats.value(pyruntime::cpu::weight_format_name(f), f);  // the names are static strings
  py::enum_<pyruntime::Activation>(m, "Activation", "the MLP's gate activation")
      .value("silu", pyruntime::Activation::SiLU)
      .value("gelu_tanh", pyruntime::Activation::GeluTanh);
  py::class_<WeightMatrix>(m, "WeightMatrix", "one weight matrix [rows, cols]: format, tensors, layout")
      .def(py::init<pyruntime::cpu::WeightFormat, at::Tensor, OptTensor>(), py::arg("format"), py::arg("data"),
           py::arg("scales") = py::none())
      .def_readonly("format", &WeightMatrix::format)
      .def_readonly("data", &WeightMatrix::data)
      .def_readonly("scales", &WeightMatrix::scales)
      .def_property_readonly("shape", [](const WeightMatrix& w) { return std::make_tuple(w.rows, w.cols); })
      .def_readonly("group", &WeightMatrix::group)
      .def_readonly("block_rows", &WeightMatrix::block_rows)
      .def_property_readonly("device", &WeightMatrix::device)
      .def_property_readonly("nbytes", &WeightMatrix::nbytes)
      .def("__repr__", &WeightMatrix::repr);
  // LayerSpec(**attributes): each of model_fields.h's attributes by name; required ones (the
  // matrices and the vectors every layer has) must be given, optional ones may be None.
  py::class_<LayerSpec> layer(m, "LayerSpec", "one decoder block of a ModelSpec (its attributes: LayerSpec.fields)");
  layer.def(py::init([](const py::kwargs& kwargs) {
    py::dict kw = kwargs.attr("copy")();  // each attribute taken out of it: what is left is unknown
    LayerSpec l;
#define PYRUNTIME_TAKE_REQUIRED(name, ...) take_attribute(kw, "LayerSpec", #name, l.name, Given::Required);
#define PYRUNTIME_TAKE_OPTIONAL(name, ...) take_attribute(kw, "LayerSpec", #name, l.name, Given::NoneIsAbsent);
#define PYRUNTIME_TAKE_COUNT(name) take_attribute(kw, "LayerSpec", #name, l.name, Given::Defaulted);
    PYRUNTIME_LAYER_MATRICES(PYRUNTIME_TAKE_REQUIRED)
    PYRUNTIME_LAYER_VECTORS(PYRUNTIME_TAKE_REQUIRED)
    PYRUNTIME_LAYER_OPTIONAL_VECTORS(PYRUNTIME_TAKE_OPTIONAL)
    PYRUNTIME_LAYER_COUNTS(PYRUNTIME_TAKE_COUNT)
    PYRUNTIME_LAYER_TABLES(PYRUNTIME_TAKE_OPTIONAL)
#undef PYRUNTIME_TAKE_REQUIRED
#undef PYRUNTIME_TAKE_OPTIONAL
#undef PYRUNTIME_TAKE_COUNT
    refuse_unknown(kw, "LayerSpec", "LayerSpec.fields lists them");
    return l;
  }));
  // fields: every attribute's name -> its kind (matrix, vector, optional_vector, count, table).
  py::dict layer_fields;
#define PYRUNTIME_DEF_FIELD(kind, name)        \
  layer.def_readonly(#name, &LayerSpec::name); \
  layer_fields[#name] = kind;
#define PYRUNTIME_MATRIX_FIELD(name, ...) PYRUNTIME_DEF_FIELD("matrix", name)
#define PYRUNTIME_VECTOR_FIELD(name, ...) PYRUNTIME_DEF_FIELD("vector", name)
#define PYRUNTIME_OPTIONAL_FIELD(name, ...) PYRUNTIME_DEF_FIELD("optional_vector", name)
#define PYRUNTIME_COUNT_FIELD(name) PYRUNTIME_DEF_FIELD("count", name)
#define PYRUNTIME_TABLE_FIELD(name) PYRUNTIME_DEF_FIELD("table", name)
  PYRUNTIME_LAYER_MATRICES(PYRUNTIME_MATRIX_FIELD)
  PYRUNTIME_LAYER_VECTORS(PYRUNTIME_VECTOR_FIELD)
  PYRUNTIME_LAYER_OPTIONAL_VECTORS(PYRUNTIME_OPTIONAL_FIELD)
  PYRUNTIME_LAYER_COUNTS(PYRUNTIME_COUNT_FIELD)
  PYRUNTIME_LAYER_TABLES(PYRUNTIME_TABLE_FIELD)
#undef PYRUNTIME_DEF_FIELD
#undef PYRUNTIME_MATRIX_FIELD
#undef PYRUNTIME_VECTOR_FIELD
#undef PYRUNTIME_OPTIONAL_FIELD
#undef PYRUNTIME_COUNT_FIELD
#undef PYRUNTIME_TABLE_FIELD
  layer.attr("fields") = layer_fields;
  // ModelSpec(**attributes): these, required, and model_fields.h's features, each `off` unless given.
#define PYRUNTIME_MODEL_REQUIRED(X)                                                                          \
  X(architecture) X(hidden) X(inter) X(num_heads) X(num_kv_heads) X(head_dim) X(vocab) X(norm_eps) X(attn_scale) \
  X(rope_cos_sin) X(rotary_dim) X(rope_neox) X(embed) X(layers) X(final_norm) X(lm_head)
  py::class_<ModelSpec> model(m, "ModelSpec", "the typed model description every engine is built from");
  model.def(py::init([](const py::kwargs& kwargs) {
    py::dict kw = kwargs.attr("copy")();
    ModelSpec s;
#define PYRUNTIME_TAKE_REQUIRED(name) take_attribute(kw, "ModelSpec", #name, s.name, Given::Required);
#define PYRUNTIME_TAKE_FEATURE(type, name, ...) take_attribute(kw, "ModelSpec", #name, s.name, Given::Defaulted);
    PYRUNTIME_MODEL_REQUIRED(PYRUNTIME_TAKE_REQUIRED)
    PYRUNTIME_MODEL_FEATURES(PYRUNTIME_TAKE_FEATURE)
#undef PYRUNTIME_TAKE_REQUIRED
#undef PYRUNTIME_TAKE_FEATURE
    refuse_unknown(kw, "ModelSpec", "ModelSpec.features lists the optional ones");
    return s;
  }));
  py::list model_features;
#define PYRUNTIME_DEF_REQUIRED(name) model.def_readonly(#name, &ModelSpec::name);
#define PYRUNTIME_DEF_FEATURE(type, name, ...) \
  model.def_readonly(#name, &ModelSpec::name); \
  model_features.append(#name);
  PYRUNTIME_MODEL_REQUIRED(PYRUNTIME_DEF_REQUIRED)
  PYRUNTIME_MODEL_FEATURES(PYRUNTIME_DEF_FEATURE)
#undef PYRUNTIME_DEF_REQUIRED
#undef PYRUNTIME_DEF_FEATURE
#undef PYRUNTIME_MODEL_REQUIRED
  model.attr("features") = py::tuple(model_features);
  model
      .def_property_readonly("num_layers", &ModelSpec::num_layers)
      .def_property_readonly("nbytes", &ModelSpec::nbytes, "bytes of the distinct weight tensors")
      .def("check", [](const ModelSpec& s) {
             s.check("ModelSpec", s.final_norm.defined() ? s.final_norm.scalar_type() : at::kFloat,
                     pyruntime::all_weight_formats());
           }, "ValueError naming the first field whose size, device or dtype does not fit");
  py::class_<pyruntime::EngineHandle>(m, "Engine", "whole forward steps on the CPU with resident weights")
      .def(py::init<ModelSpec, int64_t, at::ScalarType, int64_t, int64_t, bool>(), py::arg("spec"),
           py::arg("max_seq"), py::arg("kv_dtype"), py::arg("threads"), py::arg("max_tokens"),
           py::arg("int8_activations") = true)
      .def("forward", &pyruntime::EngineHandle::forward, py::arg("tokens"), py::arg("positions"),
           py::arg("rows"), py::arg("k_cache"), py::arg("v_cache"), py::arg("logits"),
           py::arg("first_logit"), py::arg("prompt") = false, py::arg("logit_tokens") = py::none(),
           py::call_guard<py::gil_scoped_release>())
      .def("set_profiling", &pyruntime::EngineHandle::set_profiling)
      .def("profile", &pyruntime::EngineHandle::profile)
      .def_property_readonly("spec", &pyruntime::EngineHandle::spec)
      .def_property_readonly("threads", &pyruntime::EngineHandle::threads)
      .def_property_readonly("isa", &pyruntime::EngineHandle::isa)
      .def_property_readonly("max_tokens", &pyruntime::EngineHandle::max_tokens)
      .def_property_readonly("layer_slots", &pyruntime::EngineHandle::layer_slots,
                             "positions each layer's KV cache keeps per sequence (a ring on sliding-window layers)")
      .def_property_readonly("int8_activations", &pyruntime::EngineHandle::int8_activations,
                             "Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K products against activations quantised to 8 bits")
      .def_property("prompt_bits", &pyruntime::EngineHandle::prompt_bits, &pyruntime::EngineHandle::set_prompt_bits,
                    "bits of the prompts' activations in those products: 8, 16 (the default) or 32 (float32) "
                    "where the level has the integer GEMM for them (int8_prompt_products(), "
                    "int16_prompt_products()), else 32");
#ifdef PYRUNTIME_WITH_CUDA
  py::class_<pyruntime::CudaEngineHandle>(m, "CudaEngine",
                                          "whole forward steps on a CUDA device, decode steps as CUDA graphs")
      .def(py::init<ModelSpec, int64_t, int64_t>(), py::arg("spec"), py::arg("max_seq"), py::arg("max_tokens"))
      .def("forward", &pyruntime::CudaEngineHandle::forward, py::arg("tokens"), py::arg("positions"),
           py::arg("rows"), py::arg("k_cache"), py::arg("v_cache"), py::arg("logits"), py::arg("first_logit"),
           py::arg("stream"), py::call_guard<py::gil_scoped_release>())
      .def("set_cuda_graphs", &pyruntime::CudaEngineHandle::set_cuda_graphs)
      .def_property_readonly("spec", &pyruntime::CudaEngineHandle::spec)
      .def_property_readonly("graphs", &pyruntime::CudaEngineHandle::graphs)
      .def_property_readonly("max_tokens", &pyruntime::CudaEngineHandle::max_tokens);
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
