// The public CPU kernels (cpu_kernels.h): each call goes to the build of the active
// instruction-set level (cpu_isa.h). This file is compiled for baseline x86-64.
#include <cpuid.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string>

#include "pyruntime/cpu_isa.h"
#include "pyruntime/cpu_kernels.h"

namespace pyruntime::cpu {

// Each level's kernels, as kernels_<isa>.cpp defines them.
namespace scalar {
#include "pyruntime/cpu_kernels.inc"
}  // namespace scalar
namespace avx2 {
#include "pyruntime/cpu_kernels.inc"
}  // namespace avx2
namespace avx512 {
#include "pyruntime/cpu_kernels.inc"
}  // namespace avx512
namespace avx512bf16 {
#include "pyruntime/cpu_kernels.inc"
}  // namespace avx512bf16

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = [] {
    // libgcc's cpuid reading, which also checks that the OS saves the AVX and AVX-512 state.
    __builtin_cpu_init();
    CpuFeatures c;
    c.avx2 = __builtin_cpu_supports("avx2");
    c.fma = __builtin_cpu_supports("fma");
    c.f16c = __builtin_cpu_supports("f16c");
    c.avx512f = __builtin_cpu_supports("avx512f");
    c.avx512bw = __builtin_cpu_supports("avx512bw");
    c.avx512vl = __builtin_cpu_supports("avx512vl");
    c.avx512dq = __builtin_cpu_supports("avx512dq");
    c.avx512bf16 = __builtin_cpu_supports("avx512bf16");
    c.avx512vnni = __builtin_cpu_supports("avx512vnni");
    c.amx_tile = __builtin_cpu_supports("amx-tile");
    c.amx_bf16 = __builtin_cpu_supports("amx-bf16");
    return c;
  }();
  return f;
}

const char* isa_name(Isa isa) {
  switch (isa) {
#define PYRUNTIME_ISA_NAME_CASE(E, ns) \
  case Isa::E: return #ns;
    PYRUNTIME_FOR_EACH_ISA(PYRUNTIME_ISA_NAME_CASE)
#undef PYRUNTIME_ISA_NAME_CASE
    case Isa::Count: break;
  }
  return "unknown";
}

Isa parse_isa(const std::string& name) {
  std::string names;
  for (int i = 0; i < static_cast<int>(Isa::Count); ++i) {
    const Isa isa = static_cast<Isa>(i);
    if (name == isa_name(isa)) return isa;
    names += std::string(names.empty() ? "" : ", ") + isa_name(isa);
  }
  throw InvalidArgument("unknown CPU instruction-set level '" + name + "' (expected one of: " + names + ")");
}

std::string isa_missing_features(Isa isa) {
  const CpuFeatures& f = cpu_features();
  std::string missing;
  auto need = [&](bool have, const char* name) {
    if (!have) missing += std::string(missing.empty() ? "" : ", ") + name;
  };
  if (isa >= Isa::Avx2) {
    need(f.avx2, "avx2");
    need(f.fma, "fma");
    need(f.f16c, "f16c");
  }
  if (isa >= Isa::Avx512) {
    need(f.avx512f, "avx512f");
    need(f.avx512bw, "avx512bw");
    need(f.avx512vl, "avx512vl");
    need(f.avx512dq, "avx512dq");
  }
  if (isa >= Isa::Avx512Bf16) need(f.avx512bf16, "avx512_bf16");
  return missing;
}

Isa best_isa() {
  static const Isa best = [] {
    Isa b = Isa::Scalar;
    for (int i = 0; i < static_cast<int>(Isa::Count); ++i)
      if (isa_missing_features(static_cast<Isa>(i)).empty()) b = static_cast<Isa>(i);
    return b;
  }();
  return best;
}

namespace {

constexpr int kUnset = -1;
std::atomic<int> g_active{kUnset};
std::mutex g_active_mutex;

// The vendor's default, then PYRUNTIME_Q8_DECODE_ROWS's value once read (what 0 restores).
std::atomic<int> g_q8_default_rows{[] {
  __builtin_cpu_init();
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  unsigned family = 0;
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx)) {
    family = (eax >> 8) & 0xf;
    if (family == 0xf) family += (eax >> 20) & 0xff;
  }
  return __builtin_cpu_is("amd") && family < 0x1a ? 1 : 4;  // 0x1a: Zen 5
}()};
std::atomic<int> g_q8_decode_rows{g_q8_default_rows.load()};

std::once_flag g_q8_env_read;

// PYRUNTIME_Q8_DECODE_ROWS, read before the first kernel call (a bad value throws there, and
// again at every later one).
void read_q8_decode_rows_env() {
  std::call_once(g_q8_env_read, [] {
    const char* env = std::getenv("PYRUNTIME_Q8_DECODE_ROWS");
    if (!env || !*env) return;
    const std::string v = env;
    PYRUNTIME_CHECK(v == "1" || v == "4", "PYRUNTIME_Q8_DECODE_ROWS=" + v + ": rows read at once must be 1 or 4");
    g_q8_default_rows.store(std::stoi(v), std::memory_order_relaxed);
    g_q8_decode_rows.store(std::stoi(v), std::memory_order_relaxed);
  });
}

void check_runs_here(Isa isa, const std::string& origin) {
  const std::string missing = isa_missing_features(isa);
  PYRUNTIME_CHECK(missing.empty(), origin + ": this CPU cannot run the " + isa_name(isa) +
                                       " kernels (it lacks " + missing + "); its best level is " +
                                       isa_name(best_isa()));
}

}  // namespace

Isa active_isa() {
  const int a = g_active.load(std::memory_order_acquire);
  if (a != kUnset) return static_cast<Isa>(a);
  std::lock_guard<std::mutex> lock(g_active_mutex);
  if (g_active.load(std::memory_order_relaxed) == kUnset) {
    read_q8_decode_rows_env();
    Isa isa = best_isa();
    if (const char* env = std::getenv("PYRUNTIME_CPU_ISA"); env && *env) {
      const std::string origin = std::string("PYRUNTIME_CPU_ISA=") + env;
      try {
        isa = parse_isa(env);
      } catch (const InvalidArgument& e) {
        throw InvalidArgument(origin + ": " + e.what());
      }
      check_runs_here(isa, origin);
    }
    g_active.store(static_cast<int>(isa), std::memory_order_release);
  }
  return static_cast<Isa>(g_active.load(std::memory_order_relaxed));
}

void set_active_isa(Isa isa) {
  PYRUNTIME_CHECK(isa >= Isa::Scalar && isa < Isa::Count, "set_active_isa: not a level");
  check_runs_here(isa, "set_active_isa");
  read_q8_decode_rows_env();
  std::lock_guard<std::mutex> lock(g_active_mutex);
  g_active.store(static_cast<int>(isa), std::memory_order_release);
}

int q8_decode_rows() {
  read_q8_decode_rows_env();  // done by the first kernel call's active_isa(): a bad value threw there
  return g_q8_decode_rows.load(std::memory_order_relaxed);
}

void set_q8_decode_rows(int rows) {
  read_q8_decode_rows_env();  // the environment's value, if any, comes first
  PYRUNTIME_CHECK(rows == 0 || rows == 1 || rows == 4,
                  "set_q8_decode_rows: rows must be 1, 4 or 0 (the default), got " + std::to_string(rows));
  g_q8_decode_rows.store(rows ? rows : g_q8_default_rows.load(std::memory_order_relaxed), std::memory_order_relaxed);
}

// `return <level>::call` for the active level.
#define PYRUNTIME_DISPATCH(call)                     \
  switch (active_isa()) {                            \
    case Isa::Avx512Bf16: return avx512bf16::call;   \
    case Isa::Avx512: return avx512::call;           \
    case Isa::Avx2: return avx2::call;               \
    case Isa::Scalar:                                \
    case Isa::Count: break;                          \
  }                                                  \
  return scalar::call

double measure_read_bandwidth_gbps(int64_t bytes) { PYRUNTIME_DISPATCH(measure_read_bandwidth_gbps(bytes)); }
double measure_fma_gflops() { PYRUNTIME_DISPATCH(measure_fma_gflops()); }
KernelPaths kernel_paths() { PYRUNTIME_DISPATCH(kernel_paths()); }

template <typename T>
void rms_norm(T* out, int64_t out_stride, const T* x, int64_t x_stride, const T* weight, int64_t rows,
              int64_t hidden, float eps) {
  PYRUNTIME_DISPATCH(rms_norm(out, out_stride, x, x_stride, weight, rows, hidden, eps));
}

template <typename T>
void fused_add_rms_norm(T* x, int64_t x_stride, T* residual, int64_t residual_stride, const T* weight,
                        int64_t rows, int64_t hidden, float eps) {
  PYRUNTIME_DISPATCH(fused_add_rms_norm(x, x_stride, residual, residual_stride, weight, rows, hidden, eps));
}

template <typename T>
void rotary_embedding(const int64_t* positions, T* q, HeadsView qv, T* k, HeadsView kv, int64_t num_tokens,
                      int64_t head_dim, const float* cos_sin_cache, int64_t rot_dim, bool is_neox) {
  PYRUNTIME_DISPATCH(rotary_embedding(positions, q, qv, k, kv, num_tokens, head_dim, cos_sin_cache, rot_dim, is_neox));
}

template <typename T>
void rotary_embedding_and_cache(const int64_t* positions, T* q, HeadsView qv, T* k, const T* v, HeadsView kv,
                                T* k_cache, T* v_cache, int64_t batch, int64_t tokens, int64_t max_seq,
                                int64_t head_dim, const float* cos_sin_cache, int64_t rot_dim, bool is_neox) {
  PYRUNTIME_DISPATCH(rotary_embedding_and_cache(positions, q, qv, k, v, kv, k_cache, v_cache, batch, tokens,
                                                max_seq, head_dim, cos_sin_cache, rot_dim, is_neox));
}

template <typename T>
void silu_and_mul(T* out, int64_t out_stride, const T* x, int64_t x_stride, int64_t rows, int64_t inter) {
  PYRUNTIME_DISPATCH(silu_and_mul(out, out_stride, x, x_stride, rows, inter));
}

template <typename T>
void linear(T* y, const T* x, const T* w, int64_t tokens, int64_t in_features, int64_t out_features,
            float* workspace) {
  PYRUNTIME_DISPATCH(linear(y, x, w, tokens, in_features, out_features, workspace));
}

int64_t linear_workspace_floats(int64_t tokens, int64_t in_features, int64_t out_features) {
  PYRUNTIME_DISPATCH(linear_workspace_floats(tokens, in_features, out_features));
}

template <typename T>
void gated_mlp(T* out, const T* x, const T* gate_up, const T* down, int64_t tokens, int64_t hidden,
               int64_t inter, float* workspace) {
  PYRUNTIME_DISPATCH(gated_mlp(out, x, gate_up, down, tokens, hidden, inter, workspace));
}

int64_t gated_mlp_workspace_floats(int64_t tokens, int64_t hidden, int64_t inter) {
  PYRUNTIME_DISPATCH(gated_mlp_workspace_floats(tokens, hidden, inter));
}

DecodePlan plan_gqa_decode(const int32_t* seq_lens, int64_t batch, int64_t num_kv_heads,
                           const int32_t* first_keys) {
  PYRUNTIME_DISPATCH(plan_gqa_decode(seq_lens, batch, num_kv_heads, first_keys));
}

int64_t gqa_decode_workspace_floats(const DecodePlan& plan, int64_t batch, int64_t num_q_heads,
                                    int64_t head_dim) {
  PYRUNTIME_DISPATCH(gqa_decode_workspace_floats(plan, batch, num_q_heads, head_dim));
}

template <typename T>
void gqa_decode_attention(T* out, const T* q, const T* k_cache, const T* v_cache, const int32_t* seq_lens,
                          int64_t batch, int64_t num_q_heads, int64_t num_kv_heads, int64_t max_seq,
                          int64_t head_dim, float scale, const DecodePlan& plan, float* workspace) {
  PYRUNTIME_DISPATCH(gqa_decode_attention(out, q, k_cache, v_cache, seq_lens, batch, num_q_heads, num_kv_heads,
                                          max_seq, head_dim, scale, plan, workspace));
}

template <typename T>
void prefill_attention(T* out, const T* q, const T* k_cache, const T* v_cache, int64_t tokens, int64_t start_pos,
                       int64_t num_q_heads, int64_t num_kv_heads, int64_t max_seq, int64_t head_dim, float scale,
                       int64_t threads, float* workspace) {
  PYRUNTIME_DISPATCH(prefill_attention(out, q, k_cache, v_cache, tokens, start_pos, num_q_heads, num_kv_heads,
                                       max_seq, head_dim, scale, threads, workspace));
}

int64_t prefill_attention_workspace_floats(int64_t threads, int64_t num_q_heads, int64_t num_kv_heads,
                                           int64_t head_dim) {
  PYRUNTIME_DISPATCH(prefill_attention_workspace_floats(threads, num_q_heads, num_kv_heads, head_dim));
}

#define PYRUNTIME_INSTANTIATE(T)                                                                                \
  template void rms_norm<T>(T*, int64_t, const T*, int64_t, const T*, int64_t, int64_t, float);                 \
  template void fused_add_rms_norm<T>(T*, int64_t, T*, int64_t, const T*, int64_t, int64_t, float);             \
  template void rotary_embedding<T>(const int64_t*, T*, HeadsView, T*, HeadsView, int64_t, int64_t,             \
                                    const float*, int64_t, bool);                                               \
  template void rotary_embedding_and_cache<T>(const int64_t*, T*, HeadsView, T*, const T*, HeadsView, T*, T*,  \
                                              int64_t, int64_t, int64_t, int64_t, const float*, int64_t, bool); \
  template void silu_and_mul<T>(T*, int64_t, const T*, int64_t, int64_t, int64_t);                              \
  template void linear<T>(T*, const T*, const T*, int64_t, int64_t, int64_t, float*);                          \
  template void gated_mlp<T>(T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, float*);              \
  template void gqa_decode_attention<T>(T*, const T*, const T*, const T*, const int32_t*, int64_t, int64_t,     \
                                        int64_t, int64_t, int64_t, float, const DecodePlan&, float*);           \
  template void prefill_attention<T>(T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t,      \
                                     int64_t, int64_t, float, int64_t, float*);
PYRUNTIME_INSTANTIATE(float)
PYRUNTIME_INSTANTIATE(bf16)
#undef PYRUNTIME_INSTANTIATE

}  // namespace pyruntime::cpu
