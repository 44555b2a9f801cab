// C++ test of the CPU engine (run by ctest in every ISA build): a tiny random Llama through
// the engine - one prefill call (the packed GEMM path) and then one token per call (the
// row-tile path) - against a double-precision forward pass written here, for float32,
// bfloat16 and int8 weights.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "pyruntime/engine.h"

#include "isa_or_skip.h"

using pyruntime::bf16;
namespace cpu = pyruntime::cpu;

namespace {

constexpr int64_t H = 64, I = 96, HQ = 4, HKV = 2, D = 32, V = 50, L = 2, S = 64, ROT = 32;
constexpr int64_t QKV = (HQ + 2 * HKV) * D;
constexpr int64_t GROUP = 32;
constexpr double kTheta = 10000.0, kEps = 1e-5;

int g_failures = 0, g_checks = 0;

using Mat = std::vector<float>;  // row-major

Mat random_mat(int64_t n, std::mt19937& rng, float scale) {
  std::normal_distribution<float> dist(0.0f, scale);
  Mat m(n);
  for (auto& x : m) x = dist(rng);
  return m;
}

struct Model {
  Mat embed, lm_head, final_norm;
  struct Layer { Mat attn_norm, qkv, o, mlp_norm, gate_up, down; };
  std::vector<Layer> layers;
};

// The weights as the engine will see them (rounded to bf16, or int8 round trip).
float stored(float w, float scale, cpu::WeightFormat f) {
  if (f == cpu::WeightFormat::BFloat16) return pyruntime::bf16_to_float(pyruntime::float_to_bf16(w));
  if (f == cpu::WeightFormat::Int8) return scale > 0 ? std::round(w / scale) * scale : 0.0f;
  return w;
}

// Storage of one matrix in the engine's format, plus the reference's copy of its values.
// int8 with block_rows > 1: rows in blocks (pack_int8_rows) where their number allows.
struct Stored {
  std::vector<float> f32, scales, scales_blocked;
  std::vector<bf16> b16;
  std::vector<int8_t> q, q_blocked;
  Mat ref;
  cpu::Matrix matrix(const Mat& w, int64_t rows, int64_t cols, cpu::WeightFormat f, int64_t block_rows = 1) {
    ref.resize(w.size());
    cpu::Matrix m;
    m.format = f;
    m.rows = rows;
    m.cols = cols;
    if (f == cpu::WeightFormat::Int8) {
      scales.assign(rows * cols / GROUP, 0.0f);
      q.resize(w.size());
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t g = 0; g < cols / GROUP; ++g) {
          float amax = 0;
          for (int64_t k = 0; k < GROUP; ++k) amax = std::max(amax, std::fabs(w[r * cols + g * GROUP + k]));
          const float s = amax / 127.0f;
          scales[r * (cols / GROUP) + g] = s;
          for (int64_t k = 0; k < GROUP; ++k) {
            const int64_t i = r * cols + g * GROUP + k;
            q[i] = static_cast<int8_t>(s > 0 ? std::round(w[i] / s) : 0);
            ref[i] = stored(w[i], s, f);
          }
        }
      m.data = q.data();
      m.scales = scales.data();
      m.group = GROUP;
      if (block_rows > 1 && rows % block_rows == 0) {
        q_blocked.resize(q.size());
        scales_blocked.resize(scales.size());
        cpu::pack_int8_rows(q.data(), scales.data(), rows, cols, GROUP, q_blocked.data(), scales_blocked.data());
        m.data = q_blocked.data();
        m.scales = scales_blocked.data();
        m.block_rows = block_rows;
      }
    } else if (f == cpu::WeightFormat::BFloat16) {
      b16.resize(w.size());
      for (size_t i = 0; i < w.size(); ++i) {
        b16[i] = pyruntime::float_to_bf16(w[i]);
        ref[i] = pyruntime::bf16_to_float(b16[i]);
      }
      m.data = b16.data();
    } else {
      f32 = w;
      ref = w;
      m.data = f32.data();
    }
    return m;
  }
};

std::vector<double> rms_norm(const std::vector<double>& x, const Mat& w) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double inv = 1.0 / std::sqrt(ss / x.size() + kEps);
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = x[i] * inv * w[i];
  return out;
}

std::vector<double> matvec(const Mat& w, int64_t rows, int64_t cols, const std::vector<double>& x) {
  std::vector<double> y(rows, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < cols; ++k) y[r] += w[r * cols + k] * x[k];
  return y;
}

void rope(double* x, int64_t pos) {  // rotate-half over the first ROT features
  for (int64_t i = 0; i < ROT / 2; ++i) {
    const double a = pos / std::pow(kTheta, 2.0 * i / ROT);
    const double x1 = x[i], x2 = x[i + ROT / 2];
    x[i] = x1 * std::cos(a) - x2 * std::sin(a);
    x[i + ROT / 2] = x2 * std::cos(a) + x1 * std::sin(a);
  }
}

// Logits [tokens, V] of a causal forward pass over the whole sequence, in double.
std::vector<std::vector<double>> reference(const Model& m, const std::vector<Stored>& st,
                                           const std::vector<int64_t>& tokens) {
  const int64_t n = tokens.size();
  std::vector<std::vector<double>> h(n, std::vector<double>(H));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < H; ++i) h[t][i] = st[0].ref[tokens[t] * H + i];
  for (int64_t l = 0; l < L; ++l) {
    const auto& ly = m.layers[l];
    const Stored* w = &st[2 + 4 * l];  // qkv, o, gate_up, down
    std::vector<std::vector<double>> qkv(n);
    for (int64_t t = 0; t < n; ++t) {
      qkv[t] = matvec(w[0].ref, QKV, H, rms_norm(h[t], ly.attn_norm));
      for (int64_t hh = 0; hh < HQ + HKV; ++hh) rope(qkv[t].data() + hh * D, t);
    }
    for (int64_t t = 0; t < n; ++t) {
      std::vector<double> attn(HQ * D, 0.0);
      for (int64_t hq = 0; hq < HQ; ++hq) {
        const int64_t kvh = hq / (HQ / HKV);
        std::vector<double> sc(t + 1);
        double mx = -1e300, sum = 0;
        for (int64_t j = 0; j <= t; ++j) {
          double d = 0;
          for (int64_t e = 0; e < D; ++e) d += qkv[t][hq * D + e] * qkv[j][HQ * D + kvh * D + e];
          sc[j] = d / std::sqrt(double(D));
          mx = std::max(mx, sc[j]);
        }
        for (auto& s : sc) sum += (s = std::exp(s - mx));
        for (int64_t j = 0; j <= t; ++j)
          for (int64_t e = 0; e < D; ++e) attn[hq * D + e] += sc[j] / sum * qkv[j][(HQ + HKV) * D + kvh * D + e];
      }
      const auto o = matvec(w[1].ref, H, HQ * D, attn);
      for (int64_t i = 0; i < H; ++i) h[t][i] += o[i];
      const auto gu = matvec(w[2].ref, 2 * I, H, rms_norm(h[t], ly.mlp_norm));
      std::vector<double> act(I);
      for (int64_t i = 0; i < I; ++i) act[i] = gu[i] / (1 + std::exp(-gu[i])) * gu[I + i];
      const auto dn = matvec(w[3].ref, H, I, act);
      for (int64_t i = 0; i < H; ++i) h[t][i] += dn[i];
    }
  }
  std::vector<std::vector<double>> logits(n);
  for (int64_t t = 0; t < n; ++t) logits[t] = matvec(st[1].ref, V, H, rms_norm(h[t], m.final_norm));
  return logits;
}

void expect_close(const std::string& what, const float* got, const std::vector<double>& want, double tol) {
  ++g_checks;
  double worst = 0, scale = 0;
  for (double w : want) scale = std::max(scale, std::fabs(w));
  for (size_t i = 0; i < want.size(); ++i) {
    const double err = std::fabs(got[i] - want[i]) / (1e-3 + scale);
    if (!(err <= worst)) worst = err;
  }
  if (!(worst <= tol)) {
    ++g_failures;
    std::printf("FAIL %s: max error %g of the logits' scale (tolerance %g)\n", what.c_str(), worst, tol);
  }
}

// block_rows: int8 matrices in blocks of rows where their number allows (all but V's).
void test_format(cpu::WeightFormat format, pyruntime::DType kv, double tol, std::mt19937& rng,
                 int64_t block_rows = 1) {
  Model m;
  m.embed = random_mat(V * H, rng, 1.0f);
  m.lm_head = random_mat(V * H, rng, 0.2f);
  m.final_norm = random_mat(H, rng, 0.2f);
  for (auto& x : m.final_norm) x += 1.0f;
  std::vector<Stored> st(2 + 4 * L);
  cpu::EngineSpec s;
  s.hidden = H; s.inter = I; s.num_heads = HQ; s.num_kv_heads = HKV; s.head_dim = D; s.vocab = V;
  s.max_seq = S; s.rot_dim = ROT; s.eps = static_cast<float>(kEps); s.kv_dtype = kv;
  s.max_tokens = 48;
  s.embed = st[0].matrix(m.embed, V, H, format, block_rows);
  s.lm_head = st[1].matrix(m.lm_head, V, H, format, block_rows);
  s.final_norm = m.final_norm.data();
  m.layers.resize(L);
  for (int64_t l = 0; l < L; ++l) {
    auto& ly = m.layers[l];
    ly.attn_norm = random_mat(H, rng, 0.2f);
    ly.mlp_norm = random_mat(H, rng, 0.2f);
    for (auto* n : {&ly.attn_norm, &ly.mlp_norm})
      for (auto& x : *n) x += 1.0f;
    ly.qkv = random_mat(QKV * H, rng, 0.15f);
    ly.o = random_mat(H * HQ * D, rng, 0.1f);
    ly.gate_up = random_mat(2 * I * H, rng, 0.15f);
    ly.down = random_mat(H * I, rng, 0.1f);
    cpu::EngineLayer e;
    e.attn_norm = ly.attn_norm.data();
    e.mlp_norm = ly.mlp_norm.data();
    // q, k, v and gate, up: row views of one stored matrix each (Matrix::rows_view).
    const cpu::Matrix qkv = st[2 + 4 * l].matrix(ly.qkv, QKV, H, format, block_rows);
    e.q = qkv.rows_view(0, HQ * D);
    e.k = qkv.rows_view(HQ * D, HKV * D);
    e.v = qkv.rows_view((HQ + HKV) * D, HKV * D);
    e.o = st[3 + 4 * l].matrix(ly.o, H, HQ * D, format, block_rows);
    const cpu::Matrix gate_up = st[4 + 4 * l].matrix(ly.gate_up, 2 * I, H, format, block_rows);
    e.gate = gate_up.rows_view(0, I);
    e.up = gate_up.rows_view(I, I);
    e.down = st[5 + 4 * l].matrix(ly.down, H, I, format, block_rows);
    s.layers.push_back(e);
  }
  std::vector<float> cos_sin(S * ROT);
  for (int64_t p = 0; p < S; ++p)
    for (int64_t i = 0; i < ROT / 2; ++i) {
      const float a = static_cast<float>(p) * static_cast<float>(1.0 / std::pow(kTheta, 2.0 * i / ROT));
      cos_sin[p * ROT + i] = std::cos(a);
      cos_sin[p * ROT + ROT / 2 + i] = std::sin(a);
    }
  s.cos_sin = cos_sin.data();
  cpu::Engine engine(s);
  ++g_checks;
  if (engine.isa() != cpu::active_isa()) {
    ++g_failures;
    std::printf("FAIL the engine runs the %s kernels, not the active %s\n", cpu::isa_name(engine.isa()),
                cpu::isa_name(cpu::active_isa()));
  }

  const int64_t prompt = 40, total = 46;
  std::vector<int64_t> tokens(total), positions(total), rows(total, 0);
  std::uniform_int_distribution<int64_t> tok(0, V - 1);
  for (int64_t t = 0; t < total; ++t) { tokens[t] = tok(rng); positions[t] = t; }
  const auto want = reference(m, st, tokens);
  const size_t kv_elems = L * HKV * S * D * 2;  // generous: bytes of float32 for either dtype
  std::vector<float> k_cache(kv_elems, 0.0f), v_cache(kv_elems, 0.0f);
  std::vector<float> logits(prompt * V);
  const std::string fmt =
      std::string(cpu::weight_format_name(format)) + (block_rows > 1 ? " in row blocks" : "");
  // Prefill: every prompt token's logits in one call (over kPromptGemmTokens tokens: the GEMM path).
  engine.forward(tokens.data(), positions.data(), rows.data(), prompt, k_cache.data(), v_cache.data(), 1,
                 logits.data(), 0, /*prompt=*/true);
  for (int64_t t = 0; t < prompt; ++t)
    expect_close("engine<" + fmt + "> prefill token " + std::to_string(t), logits.data() + t * V, want[t], tol);
  // Decode: one token per call (the row tiles), attending to the prefilled cache.
  for (int64_t t = prompt; t < total; ++t) {
    engine.forward(&tokens[t], &positions[t], &rows[t], 1, k_cache.data(), v_cache.data(), 1, logits.data(), 0);
    expect_close("engine<" + fmt + "> decode token " + std::to_string(t), logits.data(), want[t], tol);
  }
  // Bad calls are refused with the argument's name, before any work.
  int64_t bad = V;
  try {
    engine.forward(&bad, &positions[0], &rows[0], 1, k_cache.data(), v_cache.data(), 1, logits.data(), 0);
    ++g_failures;
    std::printf("FAIL engine<%s>: token %lld accepted\n", fmt.c_str(), static_cast<long long>(bad));
  } catch (const pyruntime::InvalidArgument& e) {
    if (std::string(e.what()).find("tokens[0]") == std::string::npos) {
      ++g_failures;
      std::printf("FAIL engine<%s>: message '%s' does not name tokens[0]\n", fmt.c_str(), e.what());
    }
  }
  ++g_checks;
}

// The library's quantizer against this file's: same scales, q within 1 (float vs float
// rounding of w / s at exact halves), all-zero groups give scale 0 and q 0.
void test_quantize(std::mt19937& rng) {
  const int64_t rows = 5, cols = 3 * GROUP;
  Mat w = random_mat(rows * cols, rng, 2.0f);
  std::fill(w.begin(), w.begin() + GROUP, 0.0f);
  Stored want;
  want.matrix(w, rows, cols, cpu::WeightFormat::Int8);
  std::vector<int8_t> q(rows * cols);
  std::vector<float> scales(rows * cols / GROUP);
  cpu::quantize_int8(w.data(), rows, cols, GROUP, q.data(), scales.data());
  int bad = 0;
  for (size_t i = 0; i < scales.size(); ++i) bad += scales[i] != want.scales[i];
  for (size_t i = 0; i < q.size(); ++i) bad += std::abs(q[i] - want.q[i]) > 1;
  ++g_checks;
  if (bad) {
    ++g_failures;
    std::printf("FAIL quantize_int8: %d values differ from the reference\n", bad);
  }
  ++g_checks;
  if (cpu::int8_group_size(96) != 32 || cpu::int8_group_size(128) != 64) {
    ++g_failures;
    std::printf("FAIL int8_group_size\n");
  }
  ++g_checks;
  try {
    cpu::int8_group_size(40);
    ++g_failures;
    std::printf("FAIL int8_group_size(40) accepted\n");
  } catch (const pyruntime::InvalidArgument&) {
  }
}

}  // namespace

int main() {
  run_at_active_isa_or_skip("test_engine");
  std::mt19937 rng(99);
  test_quantize(rng);
  test_format(cpu::WeightFormat::Float32, pyruntime::DType::Float32, 1e-4, rng);
  test_format(cpu::WeightFormat::BFloat16, pyruntime::DType::BFloat16, 2e-2, rng);
  // bf16 weights, float32 activations and cache: float32-grade sums (on AMX tiles where the CPU
  // has them: the tokens as a high and a low bf16 part).
  test_format(cpu::WeightFormat::BFloat16, pyruntime::DType::Float32, 1e-4, rng);
  test_format(cpu::WeightFormat::Int8, pyruntime::DType::Float32, 1e-4, rng);
  test_format(cpu::WeightFormat::Int8, pyruntime::DType::BFloat16, 2e-2, rng, cpu::kInt8BlockRows);
  std::printf("%d passed, %d failed\n", g_checks - g_failures, g_failures);
  return g_failures == 0 ? 0 : 1;
}
