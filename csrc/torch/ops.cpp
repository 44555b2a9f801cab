// Argument checks and dtype/device dispatch for the ops; the kernels below this layer
// trust their arguments, so everything a kernel indexes by is validated here.
#include "ops.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>

#include "pyruntime/cpu_kernels.h"
#include "pyruntime/dispatch.h"
#ifdef PYRUNTIME_WITH_CUDA
#include "cuda_guard.h"
#include "pyruntime/cuda_kernels.h"
#endif

namespace pyruntime {

namespace {

void check_dtype(const at::Tensor& t, const char* name) {
  const auto st = t.scalar_type();
  const bool ok = st == at::kFloat || st == at::kBFloat16 || (t.is_cuda() && st == at::kHalf);
  TORCH_CHECK_VALUE(ok, name, ": dtype ", st, " is not supported on ", t.device(),
                    " (float32 or bfloat16", t.is_cuda() ? ", float16)" : ")");
  TORCH_CHECK_VALUE(t.is_cpu() || t.is_cuda(), name, ": device ", t.device(),
                    " is not supported (cpu or cuda)");
}

void check_like(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name,
                    " is on ", ref.device());
  TORCH_CHECK_VALUE(t.scalar_type() == ref.scalar_type(), name, " has dtype ", t.scalar_type(),
                    " but ", ref_name, " has dtype ", ref.scalar_type());
}

void check_device(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name,
                    " is on ", ref.device());
}

void check_dim(const at::Tensor& t, const char* name, int64_t dim, const char* shape) {
  TORCH_CHECK_VALUE(t.dim() == dim, name, " must have ", dim, " dimensions ", shape, ", got shape ",
                    t.sizes());
}

void check_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous (strides ", t.strides(), ")");
}

void check_last_dim_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.size(-1) <= 1 || t.stride(-1) == 1, name,
                    " must be contiguous in its last dimension (strides ", t.strides(), ")");
}

void check_size(const at::Tensor& t, const char* name, int64_t dim, int64_t expected,
                const char* what) {
  TORCH_CHECK_VALUE(t.size(dim) == expected, name, ".shape[", dim, "] must be ", expected, " (",
                    what, "), got shape ", t.sizes());
}

// Checks that every value of a contiguous int32/int64 tensor lies in [lo, hi); syncs on CUDA.
void check_range(const at::Tensor& t, const char* name, int64_t lo, int64_t hi, const char* what) {
  if (t.numel() == 0) return;
  int64_t vmin, vmax;
  if (t.is_cpu()) {  // a plain loop: far cheaper than two torch ops for the few values here
    auto scan = [&](const auto* p) {
      vmin = vmax = p[0];
      for (int64_t i = 1; i < t.numel(); ++i) {
        vmin = std::min<int64_t>(vmin, p[i]);
        vmax = std::max<int64_t>(vmax, p[i]);
      }
    };
    if (t.scalar_type() == at::kInt) scan(t.data_ptr<int32_t>()); else scan(t.data_ptr<int64_t>());
  } else {
    auto [mn, mx] = at::aminmax(t);
    vmin = mn.item<int64_t>();
    vmax = mx.item<int64_t>();
  }
  TORCH_CHECK_VALUE(vmin >= lo && vmax < hi, name, " must lie in [", lo, ", ", hi, ") (", what,
                    "), got values from ", vmin, " to ", vmax);
}

template <typename F>
void dispatch_cpu(at::ScalarType st, F&& f) {
  if (st == at::kFloat) {
    f(float{});
  } else {
    f(bf16{});
  }
}

template <typename T>
T* ptr(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

HeadsView heads_view(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.size(1)};
}

#ifdef PYRUNTIME_WITH_CUDA
DType to_dtype(at::ScalarType st) {
  return st == at::kFloat ? DType::Float32 : st == at::kBFloat16 ? DType::BFloat16 : DType::Float16;
}
cudaStream_t stream_of(const at::Tensor& t) {
  return at::cuda::getCurrentCUDAStream(t.device().index()).stream();
}
#define PYRUNTIME_CUDA_GUARD(t) const c10::cuda::OptionalCUDAGuard guard_(t.device())
#endif

// Shared checks of the two norms: x [rows, hidden], weight [hidden].
void check_norm_args(const at::Tensor& x, const char* x_name, const at::Tensor& weight, double eps) {
  check_dtype(x, x_name);
  check_dim(x, x_name, 2, "[rows, hidden]");
  check_last_dim_contiguous(x, x_name);
  TORCH_CHECK_VALUE(x.size(1) > 0, x_name, " must have a non-empty hidden dimension");
  check_like(weight, "weight", x, x_name);
  check_dim(weight, "weight", 1, "[hidden]");
  check_contiguous(weight, "weight");
  check_size(weight, "weight", 0, x.size(1), "hidden size of x");
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, "eps must be finite and >= 0, got ", eps);
}

// Shared checks of q [tokens, Hq, D] / k [tokens, Hkv, D] and the cos/sin cache;
// returns (rot_dim, max_pos).
std::pair<int64_t, int64_t> check_rope_args(const at::Tensor& q, const at::Tensor& k,
                                            const at::Tensor& cos_sin_cache) {
  check_dtype(q, "q");
  check_like(k, "k", q, "q");
  check_dim(q, "q", 3, "[num_tokens, num_q_heads, head_dim]");
  check_dim(k, "k", 3, "[num_tokens, num_kv_heads, head_dim]");
  check_last_dim_contiguous(q, "q");
  check_last_dim_contiguous(k, "k");
  check_size(k, "k", 0, q.size(0), "num_tokens of q");
  check_size(k, "k", 2, q.size(2), "head_dim of q");
  check_device(cos_sin_cache, "cos_sin_cache", q, "q");
  TORCH_CHECK_VALUE(cos_sin_cache.scalar_type() == at::kFloat,
                    "cos_sin_cache must be float32, got ", cos_sin_cache.scalar_type());
  check_dim(cos_sin_cache, "cos_sin_cache", 2, "[max_pos, rot_dim]");
  check_contiguous(cos_sin_cache, "cos_sin_cache");
  const int64_t rot_dim = cos_sin_cache.size(1);
  TORCH_CHECK_VALUE(rot_dim > 0 && rot_dim % 2 == 0 && rot_dim <= q.size(2),
                    "cos_sin_cache.shape[1] (rot_dim) must be even, positive and <= head_dim ",
                    q.size(2), ", got ", rot_dim);
  return {rot_dim, cos_sin_cache.size(0)};
}

void check_positions(const at::Tensor& positions, const at::Tensor& q, int64_t dim,
                     const char* shape) {
  check_device(positions, "positions", q, "q");
  TORCH_CHECK_VALUE(positions.scalar_type() == at::kLong, "positions must be int64, got ",
                    positions.scalar_type());
  check_dim(positions, "positions", dim, shape);
  check_contiguous(positions, "positions");
}

}  // namespace

void rms_norm(at::Tensor& out, const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_norm_args(x, "x", weight, eps);
  check_like(out, "out", x, "x");
  TORCH_CHECK_VALUE(out.sizes() == x.sizes(), "out must have the shape of x ", x.sizes(),
                    ", got ", out.sizes());
  check_last_dim_contiguous(out, "out");
  const int64_t rows = x.size(0), hidden = x.size(1);
#ifdef PYRUNTIME_WITH_CUDA
  if (x.is_cuda()) {
    PYRUNTIME_CUDA_GUARD(x);
    return cuda::rms_norm(to_dtype(x.scalar_type()), out.data_ptr(), out.stride(0), x.data_ptr(),
                          x.stride(0), weight.data_ptr(), rows, hidden, eps, stream_of(x));
  }
#endif
  dispatch_cpu(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    cpu::rms_norm<T>(ptr<T>(out), out.stride(0), ptr<T>(x), x.stride(0), ptr<T>(weight), rows,
                     hidden, static_cast<float>(eps));
  });
}

void fused_add_rms_norm(at::Tensor& x, at::Tensor& residual, const at::Tensor& weight,
                        double eps) {
  check_norm_args(x, "x", weight, eps);
  check_like(residual, "residual", x, "x");
  TORCH_CHECK_VALUE(residual.sizes() == x.sizes(), "residual must have the shape of x ",
                    x.sizes(), ", got ", residual.sizes());
  check_last_dim_contiguous(residual, "residual");
  const int64_t rows = x.size(0), hidden = x.size(1);
#ifdef PYRUNTIME_WITH_CUDA
  if (x.is_cuda()) {
    PYRUNTIME_CUDA_GUARD(x);
    return cuda::fused_add_rms_norm(to_dtype(x.scalar_type()), x.data_ptr(), x.stride(0),
                                    residual.data_ptr(), residual.stride(0), weight.data_ptr(),
                                    rows, hidden, eps, stream_of(x));
  }
#endif
  dispatch_cpu(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    cpu::fused_add_rms_norm<T>(ptr<T>(x), x.stride(0), ptr<T>(residual), residual.stride(0),
                               ptr<T>(weight), rows, hidden, static_cast<float>(eps));
  });
}

void rotary_embedding(const at::Tensor& positions, at::Tensor& q, at::Tensor& k,
                      const at::Tensor& cos_sin_cache, bool is_neox) {
  const auto [rot_dim, max_pos] = check_rope_args(q, k, cos_sin_cache);
  check_positions(positions, q, 1, "[num_tokens]");
  check_size(positions, "positions", 0, q.size(0), "num_tokens of q");
  check_range(positions, "positions", 0, max_pos, "rows of cos_sin_cache");
  const int64_t tokens = q.size(0), head_dim = q.size(2);
#ifdef PYRUNTIME_WITH_CUDA
  if (q.is_cuda()) {
    PYRUNTIME_CUDA_GUARD(q);
    return cuda::rotary_embedding(to_dtype(q.scalar_type()), positions.data_ptr<int64_t>(),
                                  q.data_ptr(), heads_view(q), k.data_ptr(),
                                  heads_view(k), tokens, head_dim,
                                  cos_sin_cache.data_ptr<float>(), rot_dim, is_neox, stream_of(q));
  }
#endif
  dispatch_cpu(q.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    cpu::rotary_embedding<T>(positions.data_ptr<int64_t>(), ptr<T>(q), heads_view(q), ptr<T>(k),
                             heads_view(k), tokens, head_dim, cos_sin_cache.data_ptr<float>(),
                             rot_dim, is_neox);
  });
}

void rotary_embedding_and_cache(const at::Tensor& positions, at::Tensor& q, at::Tensor& k,
                                const at::Tensor& v, at::Tensor& k_cache, at::Tensor& v_cache,
                                const at::Tensor& cos_sin_cache, bool is_neox) {
  check_dim(q, "q", 4, "[batch, tokens, num_q_heads, head_dim]");
  check_dim(k, "k", 4, "[batch, tokens, num_kv_heads, head_dim]");
  check_dim(v, "v", 4, "[batch, tokens, num_kv_heads, head_dim]");
  const int64_t batch = q.size(0), tokens = q.size(1);
  for (auto [t, name] : {std::pair<const at::Tensor*, const char*>{&q, "q"}, {&k, "k"}, {&v, "v"}}) {
    TORCH_CHECK_VALUE(t->size(0) <= 1 || t->size(1) <= 1 || t->stride(0) == t->size(1) * t->stride(1),
                      name, ": its batch and token dimensions must flatten to one (strides ",
                      t->strides(), ")");
  }
  at::Tensor q3 = q.flatten(0, 1), k3 = k.flatten(0, 1), v3 = v.flatten(0, 1);
  const auto [rot_dim, max_pos] = check_rope_args(q3, k3, cos_sin_cache);
  check_like(v, "v", q, "q");
  TORCH_CHECK_VALUE(v.sizes() == k.sizes() && v.strides() == k.strides(),
                    "v must have the shape and strides of k ", k.sizes(), k.strides(), ", got ",
                    v.sizes(), v.strides());
  check_size(k, "k", 0, batch, "batch of q");
  check_positions(positions, q, 2, "[batch, tokens]");
  check_size(positions, "positions", 0, batch, "batch of q");
  check_size(positions, "positions", 1, tokens, "tokens of q");
  const int64_t num_kv_heads = k.size(2), head_dim = q.size(3);
  for (auto [t, name] : {std::pair<at::Tensor*, const char*>{&k_cache, "k_cache"}, {&v_cache, "v_cache"}}) {
    check_like(*t, name, q, "q");
    check_dim(*t, name, 4, "[batch, num_kv_heads, max_seq, head_dim]");
    check_contiguous(*t, name);
    check_size(*t, name, 0, batch, "batch of q");
    check_size(*t, name, 1, num_kv_heads, "num_kv_heads of k");
    check_size(*t, name, 3, head_dim, "head_dim of q");
  }
  TORCH_CHECK_VALUE(v_cache.sizes() == k_cache.sizes(), "v_cache must have the shape of k_cache");
  const int64_t max_seq = k_cache.size(2);
  check_range(positions, "positions", 0, std::min(max_pos, max_seq),
              "rows of cos_sin_cache and slots of the KV cache");
#ifdef PYRUNTIME_WITH_CUDA
  if (q.is_cuda()) {
    PYRUNTIME_CUDA_GUARD(q);
    return cuda::rotary_embedding_and_cache(
        to_dtype(q.scalar_type()), positions.data_ptr<int64_t>(), q.data_ptr(),
        heads_view(q3), k.data_ptr(), v.data_ptr(), heads_view(k3), k_cache.data_ptr(),
        v_cache.data_ptr(), batch, tokens, max_seq, head_dim, cos_sin_cache.data_ptr<float>(),
        rot_dim, is_neox, stream_of(q));
  }
#endif
  dispatch_cpu(q.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    cpu::rotary_embedding_and_cache<T>(positions.data_ptr<int64_t>(), ptr<T>(q), heads_view(q3),
                                       ptr<T>(k), ptr<T>(v), heads_view(k3), ptr<T>(k_cache),
                                       ptr<T>(v_cache), batch, tokens, max_seq, head_dim,
                                       cos_sin_cache.data_ptr<float>(), rot_dim, is_neox);
  });
}

void silu_and_mul(at::Tensor& out, const at::Tensor& x) {
  check_dtype(x, "x");
  check_dim(x, "x", 2, "[rows, 2 * intermediate]");
  check_last_dim_contiguous(x, "x");
  TORCH_CHECK_VALUE(x.size(1) % 2 == 0, "x.shape[-1] must be even (gate and up halves), got ",
                    x.size(1));
  const int64_t rows = x.size(0), inter = x.size(1) / 2;
  check_like(out, "out", x, "x");
  check_dim(out, "out", 2, "[rows, intermediate]");
  check_last_dim_contiguous(out, "out");
  check_size(out, "out", 0, rows, "rows of x");
  check_size(out, "out", 1, inter, "half the last dimension of x");
#ifdef PYRUNTIME_WITH_CUDA
  if (x.is_cuda()) {
    PYRUNTIME_CUDA_GUARD(x);
    return cuda::silu_and_mul(to_dtype(x.scalar_type()), out.data_ptr(), out.stride(0),
                              x.data_ptr(), x.stride(0), rows, inter, stream_of(x));
  }
#endif
  dispatch_cpu(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    cpu::silu_and_mul<T>(ptr<T>(out), out.stride(0), ptr<T>(x), x.stride(0), rows, inter);
  });
}

// Above cpu::kMaxRowTileTokens tokens a projection is a matrix product: torch's GEMM wins.

void linear(at::Tensor& out, const at::Tensor& x, const at::Tensor& weight) {
  check_dtype(x, "x");
  check_dim(x, "x", 2, "[tokens, in_features]");
  check_contiguous(x, "x");
  check_like(weight, "weight", x, "x");
  check_dim(weight, "weight", 2, "[out_features, in_features]");
  check_contiguous(weight, "weight");
  check_size(weight, "weight", 1, x.size(1), "in_features of x");
  const int64_t tokens = x.size(0), in_f = x.size(1), out_f = weight.size(0);
  check_like(out, "out", x, "x");
  check_dim(out, "out", 2, "[tokens, out_features]");
  check_contiguous(out, "out");
  check_size(out, "out", 0, tokens, "tokens of x");
  check_size(out, "out", 1, out_f, "out_features of weight");
  if (tokens == 0 || out_f == 0) return;
  if (tokens > cpu::kMaxRowTileTokens || x.is_cuda()) {
    at::linear_out(out, x, weight);
    return;
  }
  at::Tensor ws = at::empty({cpu::linear_workspace_floats(tokens, in_f, out_f)},
                            x.options().dtype(at::kFloat));
  dispatch_cpu(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    cpu::linear<T>(ptr<T>(out), ptr<T>(x), ptr<T>(weight), tokens, in_f, out_f, ws.data_ptr<float>());
  });
}

// Above cpu::kMaxRowTileTokens tokens the MLP is a pair of matrix products: torch's GEMM wins.

void gated_mlp(at::Tensor& out, const at::Tensor& x, const at::Tensor& gate_up_weight,
               const at::Tensor& down_weight) {
  check_dtype(x, "x");
  check_dim(x, "x", 2, "[tokens, hidden]");
  check_contiguous(x, "x");
  const int64_t tokens = x.size(0), hidden = x.size(1);
  check_like(gate_up_weight, "gate_up_weight", x, "x");
  check_dim(gate_up_weight, "gate_up_weight", 2, "[2 * intermediate, hidden]");
  check_contiguous(gate_up_weight, "gate_up_weight");
  check_size(gate_up_weight, "gate_up_weight", 1, hidden, "hidden size of x");
  TORCH_CHECK_VALUE(gate_up_weight.size(0) % 2 == 0 && gate_up_weight.size(0) > 0,
                    "gate_up_weight.shape[0] must be even and positive (gate rows then up rows), got ",
                    gate_up_weight.size(0));
  const int64_t inter = gate_up_weight.size(0) / 2;
  check_like(down_weight, "down_weight", x, "x");
  check_dim(down_weight, "down_weight", 2, "[hidden, intermediate]");
  check_contiguous(down_weight, "down_weight");
  check_size(down_weight, "down_weight", 0, hidden, "hidden size of x");
  check_size(down_weight, "down_weight", 1, inter, "intermediate size of gate_up_weight");
  check_like(out, "out", x, "x");
  TORCH_CHECK_VALUE(out.sizes() == x.sizes(), "out must have the shape of x ", x.sizes(),
                    ", got ", out.sizes());
  check_contiguous(out, "out");
  if (tokens == 0) return;
  if (tokens > cpu::kMaxRowTileTokens) {
    at::Tensor gu = at::linear(x, gate_up_weight);
    at::Tensor act = at::empty({tokens, inter}, x.options());
    silu_and_mul(act, gu);
    out.copy_(at::linear(act, down_weight));
    return;
  }
#ifdef PYRUNTIME_WITH_CUDA
  if (x.is_cuda()) {
    PYRUNTIME_CUDA_GUARD(x);
    at::Tensor ws = at::empty({cuda::gated_mlp_workspace_floats(tokens, hidden, inter)},
                              x.options().dtype(at::kFloat));
    return cuda::gated_mlp(to_dtype(x.scalar_type()), out.data_ptr(), x.data_ptr(),
                           gate_up_weight.data_ptr(), down_weight.data_ptr(), tokens, hidden,
                           inter, ws.data_ptr<float>(), stream_of(x));
  }
#endif
  at::Tensor ws = at::empty({cpu::gated_mlp_workspace_floats(tokens, hidden, inter)},
                            x.options().dtype(at::kFloat));
  dispatch_cpu(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    cpu::gated_mlp<T>(ptr<T>(out), ptr<T>(x), ptr<T>(gate_up_weight), ptr<T>(down_weight), tokens,
                      hidden, inter, ws.data_ptr<float>());
  });
}

// q [*, num_q_heads, head_dim] and k_cache, v_cache [..., num_kv_heads, max_seq, head_dim] of
// rank cache_dim, alike and contiguous; returns {num_kv_heads, max_seq}.
std::pair<int64_t, int64_t> check_attention(const char* op, const at::Tensor& q, const char* q_shape,
                                            const at::Tensor& k_cache, const at::Tensor& v_cache,
                                            int64_t cache_dim, const char* cache_shape) {
  check_dtype(q, "q");
  check_dim(q, "q", 3, q_shape);
  check_contiguous(q, "q");
  const int64_t num_q_heads = q.size(1), head_dim = q.size(2);
  for (auto [t, name] : {std::pair<const at::Tensor*, const char*>{&k_cache, "k_cache"}, {&v_cache, "v_cache"}}) {
    check_like(*t, name, q, "q");
    check_dim(*t, name, cache_dim, cache_shape);
    check_contiguous(*t, name);
    check_size(*t, name, cache_dim - 1, head_dim, "head_dim of q");
  }
  TORCH_CHECK_VALUE(v_cache.sizes() == k_cache.sizes(), "v_cache must have the shape of k_cache ",
                    k_cache.sizes(), ", got ", v_cache.sizes());
  const int64_t num_kv_heads = k_cache.size(cache_dim - 3), max_seq = k_cache.size(cache_dim - 2);
  TORCH_CHECK_VALUE(num_kv_heads > 0 && num_q_heads % num_kv_heads == 0, "num_q_heads (q.shape[1] = ", num_q_heads,
                    ") must be a multiple of num_kv_heads (k_cache.shape[", cache_dim - 3, "] = ", num_kv_heads, ")");
  TORCH_CHECK_VALUE(is_supported_head_dim(head_dim), op, ": unsupported head size ", head_dim,
                    " (supported: " PYRUNTIME_HEAD_DIMS_STR ")");
  return {num_kv_heads, max_seq};
}

void gqa_decode_attention(at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache,
                          const at::Tensor& v_cache, const at::Tensor& seq_lens, double scale) {
  const auto kv = check_attention("gqa_decode_attention", q, "[batch, num_q_heads, head_dim]", k_cache, v_cache, 4,
                                  "[batch, num_kv_heads, max_seq, head_dim]");
  const int64_t num_kv_heads = kv.first, max_seq = kv.second;
  const int64_t batch = q.size(0), num_q_heads = q.size(1), head_dim = q.size(2);
  check_size(k_cache, "k_cache", 0, batch, "batch of q");
  check_device(seq_lens, "seq_lens", q, "q");
  TORCH_CHECK_VALUE(seq_lens.scalar_type() == at::kInt, "seq_lens must be int32, got ",
                    seq_lens.scalar_type());
  check_dim(seq_lens, "seq_lens", 1, "[batch]");
  check_contiguous(seq_lens, "seq_lens");
  check_size(seq_lens, "seq_lens", 0, batch, "batch of q");
  check_range(seq_lens, "seq_lens", 1, max_seq + 1, "1 <= seq_len <= max_seq of the cache");
  TORCH_CHECK_VALUE(std::isfinite(scale), "scale must be finite, got ", scale);
  check_like(out, "out", q, "q");
  TORCH_CHECK_VALUE(out.sizes() == q.sizes(), "out must have the shape of q ", q.sizes(),
                    ", got ", out.sizes());
  check_contiguous(out, "out");
  if (batch == 0 || num_q_heads == 0) return;
#ifdef PYRUNTIME_WITH_CUDA
  if (q.is_cuda()) {
    PYRUNTIME_CUDA_GUARD(q);
    const int64_t splits = cuda::gqa_decode_num_splits(batch, num_kv_heads, max_seq);
    at::Tensor ws = at::empty(
        {cuda::gqa_decode_workspace_floats(batch, num_q_heads, head_dim, splits)},
        q.options().dtype(at::kFloat));
    // The kernel loads 16-byte vectors: a cache view that starts off that alignment is copied.
    const auto aligned = [](const at::Tensor& t) {
      return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 ? t : t.clone();
    };
    const at::Tensor kc = aligned(k_cache), vc = aligned(v_cache);
    return cuda::gqa_decode_attention(to_dtype(q.scalar_type()), out.data_ptr(), q.data_ptr(),
                                      kc.data_ptr(), vc.data_ptr(),
                                      seq_lens.data_ptr<int32_t>(), batch, num_q_heads,
                                      num_kv_heads, max_seq, head_dim, static_cast<float>(scale),
                                      splits, ws.data_ptr<float>(), stream_of(q));
  }
#endif
  const cpu::DecodePlan plan =
      cpu::plan_gqa_decode(seq_lens.data_ptr<int32_t>(), batch, num_kv_heads);
  at::Tensor ws = at::empty({cpu::gqa_decode_workspace_floats(plan, batch, num_q_heads, head_dim)},
                            q.options().dtype(at::kFloat));
  dispatch_cpu(q.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    cpu::gqa_decode_attention<T>(ptr<T>(out), ptr<T>(q), ptr<T>(k_cache), ptr<T>(v_cache),
                                 seq_lens.data_ptr<int32_t>(), batch, num_q_heads, num_kv_heads,
                                 max_seq, head_dim, static_cast<float>(scale), plan,
                                 ws.data_ptr<float>());
  });
}

void prefill_attention(at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache,
                       const at::Tensor& v_cache, int64_t start_pos, double scale) {
  const auto kv = check_attention("prefill_attention", q, "[tokens, num_q_heads, head_dim]", k_cache, v_cache, 3,
                                  "[num_kv_heads, max_seq, head_dim]");
  const int64_t num_kv_heads = kv.first, max_seq = kv.second;
  TORCH_CHECK_VALUE(q.device().is_cpu(), "prefill_attention: q must be on the cpu, got ", q.device());
  const int64_t tokens = q.size(0), num_q_heads = q.size(1), head_dim = q.size(2);
  TORCH_CHECK_VALUE(start_pos >= 0 && start_pos + tokens <= max_seq, "start_pos ", start_pos, " + tokens ",
                    tokens, " must lie within the cache length ", max_seq);
  TORCH_CHECK_VALUE(std::isfinite(scale), "scale must be finite, got ", scale);
  check_like(out, "out", q, "q");
  TORCH_CHECK_VALUE(out.sizes() == q.sizes(), "out must have the shape of q ", q.sizes(), ", got ", out.sizes());
  check_contiguous(out, "out");
  if (tokens == 0 || num_q_heads == 0) return;
  const int64_t threads = cpu::num_threads();
  at::Tensor ws = at::empty({cpu::prefill_attention_workspace_floats(threads, num_q_heads, num_kv_heads, head_dim)},
                            q.options().dtype(at::kFloat));
  dispatch_cpu(q.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    cpu::prefill_attention<T>(ptr<T>(out), ptr<T>(q), ptr<T>(k_cache), ptr<T>(v_cache), tokens, start_pos,
                              num_q_heads, num_kv_heads, max_seq, head_dim, static_cast<float>(scale), threads,
                              ws.data_ptr<float>());
  });
}

}  // namespace pyruntime
