// End-to-end decode latency without Python: loads a Hugging Face style Llama folder
// (config.json + model.safetensors, float32/bfloat16/float16 tensors), builds the CPU engine,
// prefills a prompt and times every greedy decode step.
//
// Usage: bench_decode MODEL_DIR [--dtype float32|bfloat16|int8] [--prompt N] [--new N] [--threads N]
//                     [--json FILE]
// (pyruntime converts the bundled GGUF into such a folder: see benchmarks/README.md.)
#include <fcntl.h>
#include <omp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "pyruntime/cpu_kernels.h"
#include "pyruntime/engine.h"

#ifndef PYRUNTIME_GIT_COMMIT
#define PYRUNTIME_GIT_COMMIT "unknown"
#endif

using json = nlohmann::json;
using pyruntime::bf16;

namespace {

// A memory-mapped safetensors file: tensor name -> (dtype, shape, bytes).
class SafeTensors {
 public:
  explicit SafeTensors(const std::string& path) : path_(path) {
    fd_ = open(path.c_str(), O_RDONLY);
    if (fd_ < 0) throw std::runtime_error(path + ": cannot open");
    struct stat st {};
    fstat(fd_, &st);
    size_ = static_cast<size_t>(st.st_size);
    if (size_ < 8) throw std::runtime_error(path + ": too short for a safetensors file");
    base_ = static_cast<const char*>(mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0));
    if (base_ == MAP_FAILED) throw std::runtime_error(path + ": mmap failed");
    uint64_t header_len = 0;
    std::memcpy(&header_len, base_, 8);
    if (header_len > size_ - 8) throw std::runtime_error(path + ": header length past the end of the file");
    header_ = json::parse(std::string(base_ + 8, header_len));
    data_ = base_ + 8 + header_len;
    data_size_ = size_ - 8 - header_len;
  }
  ~SafeTensors() {
    if (base_ && base_ != MAP_FAILED) munmap(const_cast<char*>(base_), size_);
    if (fd_ >= 0) close(fd_);
  }
  bool has(const std::string& name) const { return header_.contains(name); }

  // The tensor converted to float32, checked against the expected shape.
  std::vector<float> get(const std::string& name, std::vector<int64_t> shape) const {
    if (!has(name)) throw std::runtime_error(path_ + ": tensor '" + name + "' is missing");
    const json& t = header_.at(name);
    const auto got = t.at("shape").get<std::vector<int64_t>>();
    if (got != shape) throw std::runtime_error(path_ + ": tensor '" + name + "' has an unexpected shape");
    const auto off = t.at("data_offsets").get<std::vector<uint64_t>>();
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const std::string dtype = t.at("dtype").get<std::string>();
    const size_t elem = dtype == "F32" ? 4 : (dtype == "BF16" || dtype == "F16") ? 2 : 0;
    if (elem == 0) throw std::runtime_error(path_ + ": tensor '" + name + "' has dtype " + dtype);
    if (off.size() != 2 || off[1] > data_size_ || off[1] - off[0] != n * elem)
      throw std::runtime_error(path_ + ": tensor '" + name + "' has bad data offsets");
    const char* p = data_ + off[0];
    std::vector<float> out(n);
    for (int64_t i = 0; i < n; ++i) {
      if (dtype == "F32") {
        std::memcpy(&out[i], p + 4 * i, 4);
      } else if (dtype == "BF16") {
        bf16 b;
        std::memcpy(&b.bits, p + 2 * i, 2);
        out[i] = pyruntime::bf16_to_float(b);
      } else {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = half_to_float(h);
      }
    }
    return out;
  }

 private:
  static float half_to_float(uint16_t h) {
    _Float16 f;  // the compiler's own IEEE half (GCC >= 12, Clang on x86-64)
    std::memcpy(&f, &h, 2);
    return static_cast<float>(f);
  }
  std::string path_;
  int fd_ = -1;
  size_t size_ = 0, data_size_ = 0;
  const char* base_ = nullptr;
  const char* data_ = nullptr;
  json header_;
};

// Weight storage of the engine's format: float32, bfloat16 or int8 (the library's quantizer)
// copies of the tensors.
struct Store {
  pyruntime::cpu::WeightFormat format = pyruntime::cpu::WeightFormat::Float32;
  std::vector<std::vector<float>> f32;
  std::vector<std::vector<bf16>> b16;
  std::vector<std::vector<int8_t>> q8;
  size_t bytes = 0;

  pyruntime::cpu::Matrix matrix(std::vector<float> w, int64_t rows, int64_t cols) {
    using pyruntime::cpu::WeightFormat;
    pyruntime::cpu::Matrix m;
    m.format = format;
    m.rows = rows;
    m.cols = cols;
    if (format == WeightFormat::Int8) {
      m.group = pyruntime::cpu::int8_group_size(cols);
      std::vector<int8_t> q(w.size());
      std::vector<float> scales(w.size() / m.group);
      pyruntime::cpu::quantize_int8(w.data(), rows, cols, m.group, q.data(), scales.data());
      if (rows % pyruntime::cpu::kInt8BlockRows == 0) {  // the faster layout, as the Python engine uses
        std::vector<int8_t> qb(q.size());
        std::vector<float> sb(scales.size());
        pyruntime::cpu::pack_int8_rows(q.data(), scales.data(), rows, cols, m.group, qb.data(), sb.data());
        q.swap(qb);
        scales.swap(sb);
        m.block_rows = pyruntime::cpu::kInt8BlockRows;
      }
      bytes += q.size() + scales.size() * 4;
      q8.push_back(std::move(q));
      f32.push_back(std::move(scales));
      m.data = q8.back().data();
      m.scales = f32.back().data();
    } else if (format == WeightFormat::BFloat16) {
      std::vector<bf16> b(w.size());
      for (size_t i = 0; i < w.size(); ++i) b[i] = pyruntime::float_to_bf16(w[i]);
      bytes += b.size() * 2;
      b16.push_back(std::move(b));
      m.data = b16.back().data();
    } else {
      bytes += w.size() * 4;
      f32.push_back(std::move(w));
      m.data = f32.back().data();
    }
    return m;
  }
  const float* vec(std::vector<float> v) {
    bytes += v.size() * 4;
    f32.push_back(std::move(v));
    return f32.back().data();
  }
};

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const double k = (v.size() - 1) * p / 100.0;
  const size_t lo = static_cast<size_t>(k), hi = std::min(v.size() - 1, lo + 1);
  return v[lo] + (v[hi] - v[lo]) * (k - lo);
}

int run(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MODEL_DIR [--dtype float32|bfloat16|int8] [--prompt N] [--new N] [--threads N] [--json FILE]\n", argv[0]);
    return 2;
  }
  std::string dir = argv[1], dtype = "float32", json_path;
  int64_t prompt = 128, new_tokens = 128;
  int threads = 0;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--dtype") dtype = v;
    else if (a == "--prompt") prompt = std::stoll(v);
    else if (a == "--new") new_tokens = std::stoll(v);
    else if (a == "--threads") threads = std::stoi(v);
    else if (a == "--json") json_path = v;
    else throw std::runtime_error("unknown argument " + a);
  }
  if (dtype != "float32" && dtype != "bfloat16" && dtype != "int8")
    throw std::runtime_error("--dtype must be float32, bfloat16 or int8");
  if (prompt < 1 || new_tokens < 2) throw std::runtime_error("--prompt >= 1 and --new >= 2 are needed");
  if (threads > 0) omp_set_num_threads(threads);

  std::ifstream cf(dir + "/config.json");
  if (!cf) throw std::runtime_error(dir + "/config.json: cannot open");
  const json cfg = json::parse(cf);
  const int64_t H = cfg.at("hidden_size"), I = cfg.at("intermediate_size"), V = cfg.at("vocab_size");
  const int64_t L = cfg.at("num_hidden_layers"), Hq = cfg.at("num_attention_heads");
  const int64_t Hkv = cfg.value("num_key_value_heads", Hq);
  const int64_t D = cfg.contains("head_dim") && !cfg["head_dim"].is_null() ? cfg["head_dim"].get<int64_t>() : H / Hq;
  const double theta = cfg.value("rope_theta", 10000.0);
  const bool tied = cfg.value("tie_word_embeddings", false);
  if (cfg.contains("rope_scaling") && !cfg["rope_scaling"].is_null())
    throw std::runtime_error("config.json: rope_scaling is not supported by this benchmark (plain RoPE only)");
  const int64_t max_seq = prompt + new_tokens;

  SafeTensors st(dir + "/model.safetensors");
  Store store;
  store.format = dtype == "int8"       ? pyruntime::cpu::WeightFormat::Int8
                 : dtype == "bfloat16" ? pyruntime::cpu::WeightFormat::BFloat16
                                       : pyruntime::cpu::WeightFormat::Float32;
  const bool bf16_cache = dtype != "float32";  // as the Python LLM: int8 keeps a bfloat16 cache
  pyruntime::cpu::EngineSpec s;
  s.hidden = H; s.inter = I; s.num_heads = Hq; s.num_kv_heads = Hkv; s.head_dim = D; s.vocab = V;
  s.max_seq = max_seq; s.rot_dim = D; s.eps = cfg.value("rms_norm_eps", 1e-6);
  s.kv_dtype = bf16_cache ? pyruntime::DType::BFloat16 : pyruntime::DType::Float32;
  s.max_tokens = 256;
  const size_t before_embed = store.bytes;
  s.embed = store.matrix(st.get("model.embed_tokens.weight", {V, H}), V, H);
  const size_t embed_bytes = store.bytes - before_embed;  // the table (and int8 scales)
  s.lm_head = tied || !st.has("lm_head.weight") ? s.embed : store.matrix(st.get("lm_head.weight", {V, H}), V, H);
  s.final_norm = store.vec(st.get("model.norm.weight", {H}));
  for (int64_t l = 0; l < L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    pyruntime::cpu::EngineLayer layer;
    layer.attn_norm = store.vec(st.get(p + "input_layernorm.weight", {H}));
    layer.mlp_norm = store.vec(st.get(p + "post_attention_layernorm.weight", {H}));
    layer.q = store.matrix(st.get(p + "self_attn.q_proj.weight", {Hq * D, H}), Hq * D, H);
    layer.k = store.matrix(st.get(p + "self_attn.k_proj.weight", {Hkv * D, H}), Hkv * D, H);
    layer.v = store.matrix(st.get(p + "self_attn.v_proj.weight", {Hkv * D, H}), Hkv * D, H);
    layer.o = store.matrix(st.get(p + "self_attn.o_proj.weight", {H, Hq * D}), H, Hq * D);
    layer.gate = store.matrix(st.get(p + "mlp.gate_proj.weight", {I, H}), I, H);
    layer.up = store.matrix(st.get(p + "mlp.up_proj.weight", {I, H}), I, H);
    layer.down = store.matrix(st.get(p + "mlp.down_proj.weight", {H, I}), H, I);
    s.layers.push_back(layer);
  }
  std::vector<float> cos_sin(max_seq * D);
  for (int64_t pos = 0; pos < max_seq; ++pos)
    for (int64_t i = 0; i < D / 2; ++i) {
      const double inv = 1.0 / std::pow(theta, 2.0 * i / D);
      const float angle = static_cast<float>(pos) * static_cast<float>(inv);
      cos_sin[pos * D + i] = std::cos(angle);
      cos_sin[pos * D + D / 2 + i] = std::sin(angle);
    }
  s.cos_sin = cos_sin.data();
  // Bytes a decode step reads: every tensor once, but of the embedding table only the token's
  // row (a tied LM head reads the whole table, counted once as the LM head).
  const bool tied_head = s.lm_head.data == s.embed.data;
  const size_t weight_bytes = store.bytes - (tied_head ? 0 : embed_bytes) + embed_bytes / V;
  pyruntime::cpu::Engine engine(std::move(s));

  const size_t kv_elems = static_cast<size_t>(L * Hkv * max_seq * D);
  std::vector<float> kf, vf;
  std::vector<bf16> kb, vb;
  void *kc, *vc;
  if (bf16_cache) {
    kb.resize(kv_elems); vb.resize(kv_elems); kc = kb.data(); vc = vb.data();
  } else {
    kf.resize(kv_elems); vf.resize(kv_elems); kc = kf.data(); vc = vf.data();
  }
  const int64_t kv_bytes_per_pos = 2 * L * Hkv * D * (bf16_cache ? 2 : 4);
  std::vector<float> logits(V);
  std::vector<int64_t> tokens, positions, rows;
  auto argmax = [&] { return static_cast<int64_t>(std::max_element(logits.begin(), logits.end()) - logits.begin()); };
  using clock = std::chrono::steady_clock;
  auto seconds = [](clock::time_point a, clock::time_point b) { return std::chrono::duration<double>(b - a).count(); };

  const double bandwidth = pyruntime::cpu::measure_read_bandwidth_gbps();
  // Prefill: the prompt (token ids 1..prompt, any valid ids do) in engine chunks.
  const auto t0 = clock::now();
  for (int64_t c0 = 0; c0 < prompt; c0 += 256) {
    const int64_t n = std::min<int64_t>(256, prompt - c0);
    tokens.clear(); positions.clear(); rows.assign(n, 0);
    for (int64_t i = 0; i < n; ++i) { tokens.push_back(1 + (c0 + i) % (V - 1)); positions.push_back(c0 + i); }
    engine.forward(tokens.data(), positions.data(), rows.data(), n, kc, vc, 1, logits.data(),
                   c0 + n == prompt ? n - 1 : n, /*prompt=*/true);
  }
  int64_t tok = argmax();
  const double ttft = seconds(t0, clock::now());
  std::vector<double> steps;
  for (int64_t i = 0; i + 1 < new_tokens; ++i) {
    const int64_t pos = prompt + i, row = 0;
    const auto a = clock::now();
    engine.forward(&tok, &pos, &row, 1, kc, vc, 1, logits.data(), 0);
    tok = argmax();
    steps.push_back(seconds(a, clock::now()));
  }
  double total = 0;
  for (double x : steps) total += x;
  const double tps = steps.size() / total;
  const double bytes_per_token = weight_bytes + kv_bytes_per_pos * (prompt + new_tokens / 2.0);
  const double mbu = bytes_per_token * tps / (bandwidth * 1e9);
  std::printf("bench_decode  commit %s  %s  threads %d  read bandwidth %.1f GB/s\n", PYRUNTIME_GIT_COMMIT,
              dtype.c_str(), engine.threads(), bandwidth);
  std::printf("model %s: %lld layers, hidden %lld, weights read per token %.1f MB\n", dir.c_str(), static_cast<long long>(L),
              static_cast<long long>(H), weight_bytes / 1e6);
  std::printf("prompt %lld tokens: TTFT %.1f ms (prefill %.0f tokens/s)\n", static_cast<long long>(prompt),
              ttft * 1e3, prompt / ttft);
  std::printf("decode %zu steps: TPOT p50 %.2f / p90 %.2f / p99 %.2f ms, %.1f tokens/s, MBU %.0f%%\n", steps.size(),
              percentile(steps, 50) * 1e3, percentile(steps, 90) * 1e3, percentile(steps, 99) * 1e3, tps, 100 * mbu);
  if (!json_path.empty()) {
    json out = {{"commit", PYRUNTIME_GIT_COMMIT}, {"dtype", dtype}, {"threads", engine.threads()},
                {"read_bandwidth_gbps", bandwidth}, {"weight_bytes", weight_bytes}, {"prompt_tokens", prompt},
                {"ttft_ms", ttft * 1e3}, {"tpot_ms_p50", percentile(steps, 50) * 1e3},
                {"tpot_ms_p90", percentile(steps, 90) * 1e3}, {"tpot_ms_p99", percentile(steps, 99) * 1e3},
                {"decode_tokens_per_s", tps}, {"mbu", mbu}};
    std::ofstream(json_path) << out.dump(1) << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_decode: error: %s\n", e.what());
    return 1;
  }
}
