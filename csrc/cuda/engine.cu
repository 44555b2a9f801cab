// The CUDA engine (pyruntime/cuda_engine.h): the whole step enqueued on one stream, the
// decode steps replayed from CUDA graphs. Compiled in CI (no GPU there); its tests ran on an H100.
#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "common.cuh"
#include "gemm.cuh"
#include "gemv.cuh"
#include "pyruntime/cuda_engine.h"
#include "pyruntime/cuda_kernels.h"
#include "pyruntime/dispatch.h"

namespace pyruntime::cuda {

namespace {

constexpr int64_t kGraphMaxTokens = 16;
// Decode graphs kept at once (each one instantiates every kernel of a step): a bound, so that
// callers varying the token count or the cache see no unbounded growth; the least recently
// replayed one is destroyed first.
constexpr size_t kMaxGraphs = 32;

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("cuda engine: ") + what + ": " + cudaGetErrorString(err));
}

// Makes `device` current for one entry point and gives the caller's device back at the end:
// the engine may live on another device than the one the calling thread has current (a model
// on cuda:1 while cuda:0 is current), and that choice is the caller's. The torch layer guards
// the device too (c10::cuda::CUDAGuard); this keeps the engine right without it.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    error_ = cudaGetDevice(&previous_);
    if (error_ == cudaSuccess && previous_ != device) {
      error_ = cudaSetDevice(device);
      restore_ = error_ == cudaSuccess;
    }
  }
  ~DeviceScope() {
    if (restore_) cudaSetDevice(previous_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;
  cudaError_t error() const { return error_; }

 private:
  int previous_ = -1;
  bool restore_ = false;
  cudaError_t error_ = cudaSuccess;
};

// resid[t, :] = embed[tokens[t], :]; one block per token.
template <typename T>
__global__ void embed_kernel(T* resid, const T* embed, const int64_t* tokens, int64_t hidden) {
  const T* row = embed + tokens[blockIdx.x] * hidden;
  T* out = resid + blockIdx.x * hidden;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) out[i] = row[i];
}

// y (+)= x w^T (+ bias): decode-sized calls on the warp-per-row kernel, prompt chunks on the
// tensor cores.
template <typename T, typename OT, bool Accumulate>
void linear(OT* y, int64_t y_stride, const T* x, int64_t x_stride, const void* w, const void* bias,
            int64_t tokens, int64_t in, int64_t out_features, int device, cudaStream_t stream) {
  const T* wt = static_cast<const T*>(w);
  const T* bt = static_cast<const T*>(bias);
  if (tokens > gemv::kMaxTokens && gemm::usable(x, x_stride, wt, in, device)) {
    constexpr auto E = Accumulate ? gemm::Epilogue::Accumulate : gemm::Epilogue::Store;
    gemm::launch<E>(y, y_stride, x, x_stride, wt, bt, tokens, out_features, in, stream);
  } else {
    gemv::linear<T, T, OT, Accumulate>(y, y_stride, x, x_stride, wt, bt, tokens, in, out_features, stream);
  }
}

// act = silu(x gate^T) * (x up^T), the same split between the two kernels.
template <typename T>
void gate_up_silu(T* act, const T* x, const void* gate_up, int64_t tokens, int64_t hidden, int64_t inter, int device,
                  cudaStream_t stream) {
  const T* w = static_cast<const T*>(gate_up);
  if (tokens > gemv::kMaxTokens && gemm::usable(x, hidden, w, hidden, device))
    gemm::launch<gemm::Epilogue::GateUpSilu>(act, inter, x, hidden, w, static_cast<const T*>(nullptr), tokens, inter,
                                             hidden, stream);
  else
    gemv::gate_up_silu<T, T>(act, inter, x, hidden, w, tokens, hidden, inter, stream);
}

int64_t attention_workspace_floats(int64_t max_tokens, int64_t num_kv_heads, int64_t num_q_heads,
                                   int64_t head_dim, int64_t max_seq) {
  int64_t most = 0;
  for (int64_t b = 1; b <= max_tokens; ++b) {
    const int64_t splits = gqa_decode_num_splits(b, num_kv_heads, max_seq);
    most = std::max(most, gqa_decode_workspace_floats(b, num_q_heads, head_dim, splits));
  }
  return most;
}

// Device memory owned by the engine, freed with it.
struct DeviceBuffer {
  void* ptr = nullptr;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
  void allocate(size_t bytes) { check_cuda(cudaMalloc(&ptr, bytes), "cudaMalloc"); }
  template <typename T> T* as() const { return static_cast<T*>(ptr); }
};

// What a captured decode graph depends on beyond the engine's own buffers and the weights
// (both fixed for the engine's lifetime): the shapes of the step, and the KV cache's addresses.
// The cache is the caller's and far too large to stage, but one LLM keeps one cache, so its
// addresses rarely change; a graph replayed for an equal key runs exactly the kernels a direct
// launch would (even where a freed cache's address came back to a new one of the same rows).
// The logits are not in the key: they go through an engine-owned staging buffer, since callers
// allocate a new logits tensor for every call.
struct GraphKey {
  int64_t n = 0;            // tokens of the call
  int64_t first_logit = 0;  // rows [first_logit, n) get logits
  int64_t cache_rows = 0;   // dim 1 of the caches: the stride between layers
  void* k_cache = nullptr;
  void* v_cache = nullptr;
  bool operator==(const GraphKey& o) const {
    return n == o.n && first_logit == o.first_logit && cache_rows == o.cache_rows && k_cache == o.k_cache &&
           v_cache == o.v_cache;
  }
};

struct CachedGraph {
  GraphKey key;
  cudaGraphExec_t exec = nullptr;
  uint64_t last_use = 0;
};

}  // namespace

struct Engine::Impl {
  EngineSpec spec;
  int64_t q_dim = 0, kv_dim = 0, qkv_dim = 0;
  float scale = 1.0f;
  size_t elem = 2;  // bytes per element of the dtype
  // Activations [max_tokens, *] in the dtype; attention workspace in float32; the graphs'
  // logits float32 [min(max_tokens, kGraphMaxTokens), vocab], copied to the caller's after a replay.
  DeviceBuffer resid, xn, qkv, attn, act, attn_ws, graph_logits;
  // Per-call inputs: tokens, positions, rows (int64) and seq_lens (int32), on the device and
  // staged in pinned host memory.
  DeviceBuffer d_inputs;
  void* h_inputs = nullptr;
  // The engine's own stream (graphs cannot be captured on the legacy default stream that
  // callers often use), ordered after the caller's stream and before it again by events.
  cudaStream_t own = nullptr;
  cudaEvent_t inputs_copied = nullptr, caller_ready = nullptr, done = nullptr;
  bool graphs_on = true;
  // At most kMaxGraphs decode graphs, looked up by key (a linear scan of a few entries).
  std::vector<CachedGraph> graphs;
  uint64_t graph_clock = 0;

  explicit Impl(EngineSpec s) : spec(std::move(s)) {}
  ~Impl() {
    for (CachedGraph& g : graphs) cudaGraphExecDestroy(g.exec);
    for (cudaEvent_t e : {inputs_copied, caller_ready, done})
      if (e) cudaEventDestroy(e);
    if (own) cudaStreamDestroy(own);
    if (h_inputs) cudaFreeHost(h_inputs);
  }

  int64_t* dev_tokens() const { return d_inputs.as<int64_t>(); }
  int64_t* dev_positions() const { return dev_tokens() + spec.max_tokens; }
  int64_t* dev_rows() const { return dev_tokens() + 2 * spec.max_tokens; }
  int32_t* dev_seq_lens() const { return reinterpret_cast<int32_t*>(dev_tokens() + 3 * spec.max_tokens); }
  size_t input_bytes() const { return static_cast<size_t>(spec.max_tokens) * (3 * sizeof(int64_t) + sizeof(int32_t)); }

  // Every kernel of one call, enqueued on the stream (or recorded into a graph).
  template <typename T>
  void step(int64_t n, void* k_cache_v, void* v_cache_v, int64_t cache_rows, float* logits, int64_t first_logit,
            cudaStream_t stream) {
    const EngineSpec& s = spec;
    const int64_t H = s.hidden, I = s.inter, D = s.head_dim, Hq = s.num_heads, Hkv = s.num_kv_heads;
    T* r = resid.as<T>();
    T* x = xn.as<T>();
    T* qkvp = qkv.as<T>();
    T* at = attn.as<T>();
    T* a = act.as<T>();
    T* k_cache = static_cast<T*>(k_cache_v);
    T* v_cache = static_cast<T*>(v_cache_v);
    const int64_t layer_stride = cache_rows * Hkv * s.max_seq * D;
    const int64_t splits = gqa_decode_num_splits(n, Hkv, s.max_seq);
    embed_kernel<T><<<static_cast<unsigned>(n), 256, 0, stream>>>(r, static_cast<const T*>(s.embed), dev_tokens(), H);
    for (size_t l = 0; l < s.layers.size(); ++l) {
      const EngineLayer& L = s.layers[l];
      rms_norm(s.dtype, x, H, r, H, L.attn_norm, n, H, s.eps, stream);
      linear<T, T, false>(qkvp, qkv_dim, x, H, L.qkv, L.qkv_bias, n, H, qkv_dim, s.device, stream);
      rotary_embedding_and_cache_rows(s.dtype, dev_positions(), qkvp, {qkv_dim, D, Hq}, qkvp + q_dim,
                                      qkvp + q_dim + kv_dim, {qkv_dim, D, Hkv}, k_cache + l * layer_stride,
                                      v_cache + l * layer_stride, dev_rows(), n, s.max_seq, D, s.cos_sin,
                                      s.rot_dim, s.is_neox, stream);
      gqa_decode_attention_rows(s.dtype, at, qkvp, qkv_dim, k_cache + l * layer_stride, v_cache + l * layer_stride,
                                dev_rows(), dev_seq_lens(), n, Hq, Hkv, s.max_seq, D, scale, splits,
                                attn_ws.as<float>(), stream);
      linear<T, T, true>(r, H, at, q_dim, L.o, L.o_bias, n, q_dim, H, s.device, stream);  // residual add
      rms_norm(s.dtype, x, H, r, H, L.mlp_norm, n, H, s.eps, stream);
      gate_up_silu<T>(a, x, L.gate_up, n, H, I, s.device, stream);
      linear<T, T, true>(r, H, a, I, L.down, nullptr, n, I, H, s.device, stream);  // residual add
    }
    const int64_t n_logits = n - first_logit;
    if (n_logits > 0) {
      rms_norm(s.dtype, x, H, r + first_logit * H, H, s.final_norm, n_logits, H, s.eps, stream);
      linear<T, float, false>(logits, s.vocab, x, H, s.lm_head, nullptr, n_logits, H, s.vocab, s.device, stream);
    }
    check_launch("cuda engine step");
  }

  void run(int64_t n, void* k_cache, void* v_cache, int64_t cache_rows, float* logits, int64_t first_logit,
           cudaStream_t stream) {
    dispatch(spec.dtype, [&](auto tag) {
      using T = decltype(tag);
      if constexpr (!std::is_same_v<T, float>) step<T>(n, k_cache, v_cache, cache_rows, logits, first_logit, stream);
    });
  }

  // The graph of `key` (its logits into graph_logits), captured on `own` the first time and
  // counted as used now; at kMaxGraphs, the least recently used one is destroyed first
  // (a replay still in flight finishes: the driver frees an executing graph on completion).
  cudaGraphExec_t graph(const GraphKey& key) {
    for (CachedGraph& g : graphs) {
      if (g.key == key) {
        g.last_use = ++graph_clock;
        return g.exec;
      }
    }
    if (graphs.size() >= kMaxGraphs) {
      auto lru = std::min_element(graphs.begin(), graphs.end(),
                                  [](const CachedGraph& a, const CachedGraph& b) { return a.last_use < b.last_use; });
      cudaGraphExecDestroy(lru->exec);
      graphs.erase(lru);
    }
    cudaGraph_t g = nullptr;
    check_cuda(cudaStreamBeginCapture(own, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
    try {
      run(key.n, key.k_cache, key.v_cache, key.cache_rows, graph_logits.as<float>(), key.first_logit, own);
    } catch (...) {
      cudaStreamEndCapture(own, &g);
      if (g) cudaGraphDestroy(g);
      throw;
    }
    check_cuda(cudaStreamEndCapture(own, &g), "cudaStreamEndCapture");
    cudaGraphExec_t exec = nullptr;
    const cudaError_t err = cudaGraphInstantiate(&exec, g, 0);
    cudaGraphDestroy(g);
    check_cuda(err, "cudaGraphInstantiate");
    graphs.push_back({key, exec, ++graph_clock});
    return exec;
  }
};

Engine::Engine(EngineSpec s) {
  check_engine_shape(s, "cuda engine");
  const int64_t H = s.hidden, I = s.inter, D = s.head_dim;
  PYRUNTIME_CHECK(s.dtype == DType::BFloat16 || s.dtype == DType::Float16,
                  "cuda engine: dtype must be bfloat16 or float16");
  PYRUNTIME_CHECK(s.cos_sin && s.embed && s.final_norm && s.lm_head, "cuda engine: cos_sin, embed, final_norm "
                                                                     "and lm_head are required");
  PYRUNTIME_CHECK(!s.layers.empty(), "cuda engine: no layers");
  for (size_t l = 0; l < s.layers.size(); ++l) {
    const EngineLayer& L = s.layers[l];
    PYRUNTIME_CHECK(L.attn_norm && L.qkv && L.o && L.mlp_norm && L.gate_up && L.down,
                    "cuda engine: layers." + std::to_string(l) + " is missing a weight");
  }
  const DeviceScope on_device(s.device);
  check_cuda(on_device.error(), "cudaSetDevice");
  // Built in a local so that a failure frees what was allocated while the device is still current.
  auto impl = std::make_unique<Impl>(std::move(s));
  Impl& m = *impl;
  const EngineSpec& sp = m.spec;
  m.q_dim = sp.num_heads * D;
  m.kv_dim = sp.num_kv_heads * D;
  m.qkv_dim = m.q_dim + 2 * m.kv_dim;
  m.scale = sp.scale > 0.0f ? sp.scale : 1.0f / std::sqrt(static_cast<float>(D));
  const size_t N = static_cast<size_t>(sp.max_tokens), e = m.elem;
  m.resid.allocate(N * H * e);
  m.xn.allocate(N * H * e);
  m.qkv.allocate(N * m.qkv_dim * e);
  m.attn.allocate(N * m.q_dim * e);
  m.act.allocate(N * I * e);
  m.attn_ws.allocate(sizeof(float) *
                     attention_workspace_floats(sp.max_tokens, sp.num_kv_heads, sp.num_heads, D, sp.max_seq));
  m.graph_logits.allocate(sizeof(float) * std::min(sp.max_tokens, kGraphMaxTokens) * sp.vocab);
  m.d_inputs.allocate(m.input_bytes());
  check_cuda(cudaMallocHost(&m.h_inputs, m.input_bytes()), "cudaMallocHost");
  for (cudaEvent_t* e : {&m.inputs_copied, &m.caller_ready, &m.done})
    check_cuda(cudaEventCreateWithFlags(e, cudaEventDisableTiming), "cudaEventCreate");
  check_cuda(cudaStreamCreateWithFlags(&m.own, cudaStreamNonBlocking), "cudaStreamCreate");
  impl_ = std::move(impl);
}

Engine::~Engine() {
  const DeviceScope on_device(impl_->spec.device);  // frees the buffers, graphs and stream
  impl_.reset();
}

void Engine::forward(const int64_t* tokens, const int64_t* positions, const int64_t* rows, int64_t n,
                     void* k_cache, void* v_cache, int64_t cache_rows, float* logits, int64_t first_logit,
                     cudaStream_t stream) {
  Impl& m = *impl_;
  const EngineSpec& s = m.spec;
  PYRUNTIME_CHECK(k_cache && v_cache && (logits || first_logit == n), "cuda engine.forward: null cache or logits");
  check_forward_args(s, tokens, positions, rows, n, cache_rows, first_logit, "cuda engine");
  const DeviceScope on_device(s.device);
  check_cuda(on_device.error(), "cudaSetDevice");
  // The staging buffer is reused: wait until the previous call's copy has left it.
  check_cuda(cudaEventSynchronize(m.inputs_copied), "cudaEventSynchronize");
  int64_t* h = static_cast<int64_t*>(m.h_inputs);
  const int64_t N = s.max_tokens;
  for (int64_t i = 0; i < n; ++i) {
    h[i] = tokens[i];
    h[N + i] = positions[i];
    h[2 * N + i] = rows[i];
    reinterpret_cast<int32_t*>(h + 3 * N)[i] = static_cast<int32_t>(positions[i] + 1);
  }
  check_cuda(cudaEventRecord(m.caller_ready, stream), "cudaEventRecord");
  check_cuda(cudaStreamWaitEvent(m.own, m.caller_ready, 0), "cudaStreamWaitEvent");
  check_cuda(cudaMemcpyAsync(m.d_inputs.ptr, m.h_inputs, m.input_bytes(), cudaMemcpyHostToDevice, m.own),
             "cudaMemcpyAsync");
  check_cuda(cudaEventRecord(m.inputs_copied, m.own), "cudaEventRecord");
  if (!m.graphs_on || n > kGraphMaxTokens) {
    m.run(n, k_cache, v_cache, cache_rows, logits, first_logit, m.own);
  } else {
    check_cuda(cudaGraphLaunch(m.graph({n, first_logit, cache_rows, k_cache, v_cache}), m.own), "cudaGraphLaunch");
    const int64_t n_logits = n - first_logit;
    if (n_logits > 0)
      check_cuda(cudaMemcpyAsync(logits, m.graph_logits.ptr, sizeof(float) * n_logits * s.vocab,
                                 cudaMemcpyDeviceToDevice, m.own),
                 "cudaMemcpyAsync");
  }
  check_cuda(cudaEventRecord(m.done, m.own), "cudaEventRecord");
  check_cuda(cudaStreamWaitEvent(stream, m.done, 0), "cudaStreamWaitEvent");
}

const EngineSpec& Engine::spec() const { return impl_->spec; }
void Engine::set_cuda_graphs(bool on) { impl_->graphs_on = on; }
int64_t Engine::graphs() const { return static_cast<int64_t>(impl_->graphs.size()); }

}  // namespace pyruntime::cuda
