// C++ tests of the plain kernel library (run by ctest): each kernel against a
// double-precision reference written here, for float32 and bfloat16, over odd sizes.
#include <array>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "pyruntime/cpu_kernels.h"

#include "isa_or_skip.h"

using pyruntime::bf16;
using pyruntime::from_float;
using pyruntime::to_float;
namespace cpu = pyruntime::cpu;

namespace {

int g_failures = 0, g_checks = 0;

template <typename T> double tolerance();
template <> double tolerance<float>() { return 2e-4; }
template <> double tolerance<bf16>() { return 2e-2; }

template <typename T>
std::vector<T> random_vec(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<T> v(n);
  for (auto& x : v) x = from_float<T>(dist(rng));
  return v;
}

// Max |got - want| / (1 + |want|) must stay under the dtype's tolerance.
template <typename T>
void expect_close(const std::string& what, const std::vector<T>& got, const std::vector<double>& want) {
  ++g_checks;
  double worst = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double err = std::fabs(to_float(got[i]) - want[i]) / (1.0 + std::fabs(want[i]));
    if (!(err <= worst)) worst = err;  // NaN-aware
  }
  if (!(worst <= tolerance<T>())) {
    ++g_failures;
    std::printf("FAIL %s: max relative error %g\n", what.c_str(), worst);
  }
}

template <typename T>
std::string name(const char* op, std::initializer_list<int64_t> dims) {
  std::string s = std::string(op) + (sizeof(T) == 4 ? "<float32>" : "<bfloat16>");
  for (int64_t d : dims) s += " " + std::to_string(d);
  return s;
}

template <typename T>
void test_rms_norm(int64_t rows, int64_t hidden, std::mt19937& rng) {
  auto x = random_vec<T>(rows * hidden, rng), w = random_vec<T>(hidden, rng);
  std::vector<T> out(rows * hidden);
  cpu::rms_norm(out.data(), hidden, x.data(), hidden, w.data(), rows, hidden, 1e-6f);
  std::vector<double> want(rows * hidden);
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < hidden; ++i) ss += std::pow(to_float(x[r * hidden + i]), 2);
    const double inv = 1.0 / std::sqrt(ss / hidden + 1e-6);
    for (int64_t i = 0; i < hidden; ++i)
      want[r * hidden + i] = to_float(x[r * hidden + i]) * inv * to_float(w[i]);
  }
  expect_close(name<T>("rms_norm", {rows, hidden}), out, want);
}

template <typename T>
void test_silu_and_mul(int64_t rows, int64_t inter, std::mt19937& rng) {
  auto x = random_vec<T>(rows * 2 * inter, rng, 3.0f);
  std::vector<T> out(rows * inter);
  cpu::silu_and_mul(out.data(), inter, x.data(), 2 * inter, rows, inter);
  std::vector<double> want(rows * inter);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < inter; ++i) {
      const double g = to_float(x[r * 2 * inter + i]), u = to_float(x[r * 2 * inter + inter + i]);
      want[r * inter + i] = g / (1.0 + std::exp(-g)) * u;
    }
  expect_close(name<T>("silu_and_mul", {rows, inter}), out, want);
}

template <typename T>
void test_gated_mlp(int64_t tokens, int64_t hidden, int64_t inter, std::mt19937& rng) {
  auto x = random_vec<T>(tokens * hidden, rng);
  auto gu = random_vec<T>(2 * inter * hidden, rng, 1.0f / std::sqrt(float(hidden)));
  auto down = random_vec<T>(hidden * inter, rng, 1.0f / std::sqrt(float(inter)));
  std::vector<T> out(tokens * hidden);
  std::vector<float> ws(cpu::gated_mlp_workspace_floats(tokens, hidden, inter));
  cpu::gated_mlp(out.data(), x.data(), gu.data(), down.data(), tokens, hidden, inter, ws.data());
  std::vector<double> want(tokens * hidden, 0.0), act(inter);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t i = 0; i < inter; ++i) {
      double g = 0, u = 0;
      for (int64_t h = 0; h < hidden; ++h) {
        g += to_float(gu[i * hidden + h]) * to_float(x[t * hidden + h]);
        u += to_float(gu[(inter + i) * hidden + h]) * to_float(x[t * hidden + h]);
      }
      act[i] = g / (1.0 + std::exp(-g)) * u;
    }
    for (int64_t h = 0; h < hidden; ++h)
      for (int64_t i = 0; i < inter; ++i) want[t * hidden + h] += to_float(down[h * inter + i]) * act[i];
  }
  expect_close(name<T>("gated_mlp", {tokens, hidden, inter}), out, want);
}

template <typename T>
void test_rope(int64_t tokens, int64_t hq, int64_t hkv, int64_t d, int64_t rot, bool neox,
               std::mt19937& rng) {
  const int64_t max_pos = 4096;
  std::vector<float> cs(max_pos * rot);
  for (int64_t p = 0; p < max_pos; ++p)
    for (int64_t i = 0; i < rot / 2; ++i) {
      const double f = p * std::pow(10000.0, -2.0 * i / rot);
      cs[p * rot + i] = std::cos(f);
      cs[p * rot + rot / 2 + i] = std::sin(f);
    }
  std::vector<int64_t> pos(tokens);
  for (auto& p : pos) p = rng() % max_pos;
  auto q = random_vec<T>(tokens * hq * d, rng), k = random_vec<T>(tokens * hkv * d, rng);
  auto rotate = [&](const std::vector<T>& x, int64_t heads) {
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = to_float(x[i]);
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < rot / 2; ++i) {
          const int64_t base = (t * heads + h) * d;
          const int64_t a = neox ? i : 2 * i, b = neox ? i + rot / 2 : 2 * i + 1;
          const double c = cs[pos[t] * rot + i], s = cs[pos[t] * rot + rot / 2 + i];
          const double x1 = to_float(x[base + a]), x2 = to_float(x[base + b]);
          y[base + a] = x1 * c - x2 * s;
          y[base + b] = x2 * c + x1 * s;
        }
    return y;
  };
  auto want_q = rotate(q, hq), want_k = rotate(k, hkv);
  cpu::rotary_embedding(pos.data(), q.data(), {hq * d, d, hq}, k.data(), {hkv * d, d, hkv}, tokens,
                        d, cs.data(), rot, neox);
  expect_close(name<T>(neox ? "rope_neox.q" : "rope_gptj.q", {tokens, hq, d, rot}), q, want_q);
  expect_close(name<T>(neox ? "rope_neox.k" : "rope_gptj.k", {tokens, hkv, d, rot}), k, want_k);
}

template <typename T>
void test_decode_attention(std::vector<int32_t> lens, int64_t hq, int64_t hkv, int64_t d,
                           int64_t max_seq, std::mt19937& rng) {
  const int64_t batch = lens.size(), group = hq / hkv;
  auto q = random_vec<T>(batch * hq * d, rng);
  auto kc = random_vec<T>(batch * hkv * max_seq * d, rng), vc = random_vec<T>(batch * hkv * max_seq * d, rng);
  const float scale = 1.0f / std::sqrt(float(d));
  std::vector<T> out(batch * hq * d);
  auto plan = cpu::plan_gqa_decode(lens.data(), batch, hkv);
  std::vector<float> ws(cpu::gqa_decode_workspace_floats(plan, batch, hq, d));
  cpu::gqa_decode_attention(out.data(), q.data(), kc.data(), vc.data(), lens.data(), batch, hq, hkv,
                            max_seq, d, scale, plan, ws.data());
  std::vector<double> want(batch * hq * d, 0.0);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < hq; ++h) {
      const int64_t base = (b * hkv + h / group) * max_seq * d;
      std::vector<double> s(lens[b]);
      double mx = -1e300, sum = 0;
      for (int64_t j = 0; j < lens[b]; ++j) {
        double acc = 0;
        for (int64_t i = 0; i < d; ++i) acc += to_float(q[(b * hq + h) * d + i]) * to_float(kc[base + j * d + i]);
        s[j] = acc * scale;
        mx = std::max(mx, s[j]);
      }
      for (auto& v : s) sum += (v = std::exp(v - mx));
      for (int64_t j = 0; j < lens[b]; ++j)
        for (int64_t i = 0; i < d; ++i) want[(b * hq + h) * d + i] += s[j] / sum * to_float(vc[base + j * d + i]);
    }
  expect_close(name<T>("gqa_decode_attention", {batch, hq, hkv, d, max_seq, lens[0]}), out, want);
}

// Causal attention of `tokens` tokens at positions start_pos.. against a cache whose first
// start_pos + tokens positions are written (the rest holds NaN: it must never be read).
template <typename T>
void test_prefill_attention(int64_t tokens, int64_t start_pos, int64_t hq, int64_t hkv, int64_t d,
                            std::mt19937& rng) {
  const int64_t group = hq / hkv, max_seq = start_pos + tokens + 7, end = start_pos + tokens;
  auto q = random_vec<T>(tokens * hq * d, rng);
  auto kc = random_vec<T>(hkv * max_seq * d, rng), vc = random_vec<T>(hkv * max_seq * d, rng);
  for (int64_t h = 0; h < hkv; ++h)
    for (int64_t j = end; j < max_seq; ++j)
      for (int64_t i = 0; i < d; ++i) kc[(h * max_seq + j) * d + i] = vc[(h * max_seq + j) * d + i] = from_float<T>(NAN);
  const float scale = 1.0f / std::sqrt(float(d));
  std::vector<T> out(tokens * hq * d);
  std::vector<float> ws(cpu::prefill_attention_workspace_floats(2, hq, hkv, d));
  cpu::prefill_attention(out.data(), q.data(), kc.data(), vc.data(), tokens, start_pos, hq, hkv, max_seq, d,
                         scale, 2, ws.data());
  std::vector<double> want(tokens * hq * d, 0.0);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t h = 0; h < hq; ++h) {
      const int64_t base = (h / group) * max_seq * d, len = start_pos + t + 1;
      std::vector<double> s(len);
      double mx = -1e300, sum = 0;
      for (int64_t j = 0; j < len; ++j) {
        double acc = 0;
        for (int64_t i = 0; i < d; ++i) acc += to_float(q[(t * hq + h) * d + i]) * to_float(kc[base + j * d + i]);
        s[j] = acc * scale;
        mx = std::max(mx, s[j]);
      }
      for (auto& v : s) sum += (v = std::exp(v - mx));
      for (int64_t j = 0; j < len; ++j)
        for (int64_t i = 0; i < d; ++i) want[(t * hq + h) * d + i] += s[j] / sum * to_float(vc[base + j * d + i]);
    }
  expect_close(name<T>("prefill_attention", {tokens, start_pos, hq, hkv, d}), out, want);
}

template <typename T>
void run_all(std::mt19937& rng) {
  for (int64_t hidden : {1, 7, 64, 83, 576, 769, 5128}) test_rms_norm<T>(3, hidden, rng);
  for (int64_t rows : {9, 37}) test_rms_norm<T>(rows, 1031, rng);  // rows read four at a time, and the rest
  for (int64_t inter : {1, 13, 64, 1536}) test_silu_and_mul<T>(2, inter, rng);
  for (auto [t, h, i] : std::vector<std::array<int64_t, 3>>{{1, 64, 96}, {3, 83, 37}, {5, 576, 1536}, {1, 129, 515}})
    test_gated_mlp<T>(t, h, i, rng);
  for (bool neox : {true, false}) {
    test_rope<T>(5, 9, 3, 64, 64, neox, rng);
    test_rope<T>(3, 8, 8, 80, 32, neox, rng);
    test_rope<T>(1, 32, 8, 128, 128, neox, rng);
  }
  test_decode_attention<T>({1}, 9, 3, 64, 8, rng);
  test_decode_attention<T>({777}, 32, 8, 128, 1024, rng);
  test_decode_attention<T>({5, 300, 129}, 12, 4, 80, 333, rng);
  test_decode_attention<T>({2000, 17}, 8, 1, 96, 2000, rng);
  test_decode_attention<T>({100}, 4, 4, 256, 100, rng);
  test_prefill_attention<T>(1, 0, 9, 3, 64, rng);
  test_prefill_attention<T>(70, 0, 9, 3, 64, rng);
  test_prefill_attention<T>(33, 100, 12, 4, 80, rng);
  test_prefill_attention<T>(64, 64, 8, 1, 96, rng);
  test_prefill_attention<T>(5, 3, 4, 4, 256, rng);
  test_prefill_attention<T>(40, 1, 2, 2, 32, rng);
}

}  // namespace

int main() {
  run_at_active_isa_or_skip("test_kernels");
  std::mt19937 rng(1234);
  // Twice: with ordinary stores at these sizes, then with the streaming stores the kernels
  // take for outputs beyond the last-level cache forced on for every size.
  for (int64_t threshold : {int64_t(-1), int64_t(0)}) {
    cpu::set_streaming_store_threshold(threshold);
    run_all<float>(rng);
    run_all<bf16>(rng);
  }
  std::printf("%d passed, %d failed\n", g_checks - g_failures, g_failures);
  return g_failures == 0 ? 0 : 1;
}
