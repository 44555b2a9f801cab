// Checked, device-dispatching implementations of the ops registered in bindings.cpp.
// Shapes follow the schemas there; every check names the offending argument.
#pragma once

#include <ATen/ATen.h>

namespace pyruntime {

void rms_norm(at::Tensor& out, const at::Tensor& x, const at::Tensor& weight, double eps);
void fused_add_rms_norm(at::Tensor& x, at::Tensor& residual, const at::Tensor& weight,
                        double eps);
void rotary_embedding(const at::Tensor& positions, at::Tensor& q, at::Tensor& k,
                      const at::Tensor& cos_sin_cache, bool is_neox);
void rotary_embedding_and_cache(const at::Tensor& positions, at::Tensor& q, at::Tensor& k,
                                const at::Tensor& v, at::Tensor& k_cache, at::Tensor& v_cache,
                                const at::Tensor& cos_sin_cache, bool is_neox);
void silu_and_mul(at::Tensor& out, const at::Tensor& x);
void linear(at::Tensor& out, const at::Tensor& x, const at::Tensor& weight);
void gated_mlp(at::Tensor& out, const at::Tensor& x, const at::Tensor& gate_up_weight,
               const at::Tensor& down_weight);
void gqa_decode_attention(at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache,
                          const at::Tensor& v_cache, const at::Tensor& seq_lens, double scale);
// CPU only (CUDA prefill goes through torch's scaled_dot_product_attention in Python).
void prefill_attention(at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache,
                       const at::Tensor& v_cache, int64_t start_pos, double scale);

}  // namespace pyruntime
