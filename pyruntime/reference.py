"""TorchReference: the model's forward sequenced in Python over pyruntime.ops, one op call at a
time. It is the fallback where no compiled engine exists (float32 on CUDA) and a readable
specification of what the engines compute; it has the engines' interface (engine.Engine)."""

from __future__ import annotations

import torch

from pyruntime import ops
from pyruntime.config import ModelConfig, cos_sin_cache
from pyruntime.engine import Engine
from pyruntime.weights import ModelWeights


class TorchReference(Engine):
    max_tokens = 1 << 30  # no chunking: each prefill is one pass

    def __init__(self, cfg: ModelConfig, weights: ModelWeights, max_seq_len: int, kv_dtype: torch.dtype):
        super().__init__(cfg, max_seq_len, kv_dtype, weights.embed.device)
        self.w = weights
        self.tensors = {"embed": weights.embed, "lm_head": weights.lm_head, "final_norm": weights.final_norm}
        for i, layer in enumerate(weights.layers):
            self.tensors.update({f"layers.{i}.{k}": v for k, v in vars(layer).items() if v is not None})
        self.cos_sin = cos_sin_cache(cfg.rope, cfg.rotary_dim, max_seq_len).to(self.device)
        self.scale = cfg.head_dim**-0.5

    def _attention_inputs(self, layer, x):
        """x [T, H] -> q [T, Hq, D], k, v [T, Hkv, D] views of one fused projection."""
        cfg = self.cfg
        qkv = ops.linear(x, layer.qkv)
        if layer.qkv_bias is not None:
            qkv += layer.qkv_bias
        t = x.shape[0]
        q = qkv[:, : cfg.q_size].view(t, cfg.num_heads, cfg.head_dim)
        k = qkv[:, cfg.q_size : cfg.q_size + cfg.kv_size].view(t, cfg.num_kv_heads, cfg.head_dim)
        v = qkv[:, cfg.q_size + cfg.kv_size :].view(t, cfg.num_kv_heads, cfg.head_dim)
        return q, k, v

    def _run_layers(self, tokens: torch.Tensor, attend) -> torch.Tensor:
        """The residual stream through every layer; attend(i, q, k, v) -> [T, Hq*D]. Returns the
        final-normed hidden states [T, H]."""
        cfg, w = self.cfg, self.w
        residual = w.embed[tokens.to(self.device)]  # [T, H]
        x = ops.rms_norm(residual, w.layers[0].attn_norm, cfg.rms_norm_eps)
        for i, layer in enumerate(w.layers):
            q, k, v = self._attention_inputs(layer, x)
            x = ops.linear(attend(i, q, k, v), layer.o)
            if layer.o_bias is not None:
                x += layer.o_bias
            ops.fused_add_rms_norm(x, residual, layer.mlp_norm, cfg.rms_norm_eps)
            x = ops.gated_mlp(x, layer.gate_up, layer.down)
            next_norm = w.layers[i + 1].attn_norm if i + 1 < len(w.layers) else w.final_norm
            ops.fused_add_rms_norm(x, residual, next_norm, cfg.rms_norm_eps)
        return x

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, row: int, start_pos: int, all_logits: bool = False) -> torch.Tensor:
        t, cache = tokens.shape[0], self.cache
        positions = torch.arange(start_pos, start_pos + t, device=self.device).view(1, t)

        def attend(i, q, k, v):
            kc, vc = cache.k[i, row : row + 1], cache.v[i, row : row + 1]
            ops.rotary_embedding_and_cache(positions, q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), kc, vc,
                                           self.cos_sin)
            return ops.prefill_attention(q.contiguous(), kc[0], vc[0], start_pos, self.scale).reshape(t, -1)

        x = self._run_layers(tokens, attend)
        logits = ops.linear(x if all_logits else x[-1:], self.w.lm_head).float()
        return logits if all_logits else logits[0]

    def _forward(self, tokens, positions, rows, first_logit):
        """One decode group: token i at positions[i] of cache row rows[i] (rows consecutive)."""
        n, cache, cfg = tokens.shape[0], self.cache, self.cfg
        r0, r1 = int(rows[0]), int(rows[-1]) + 1
        pos = positions.to(self.device).view(n, 1)
        seq_lens = (positions + 1).to(device=self.device, dtype=torch.int32)

        def attend(i, q, k, v):
            kc, vc = cache.k[i, r0:r1], cache.v[i, r0:r1]
            ops.rotary_embedding_and_cache(pos, q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), kc, vc, self.cos_sin)
            return ops.gqa_decode_attention(q.contiguous(), kc, vc, seq_lens, self.scale).view(n, cfg.q_size)

        x = self._run_layers(tokens, attend)
        return ops.linear(x[first_logit:], self.w.lm_head).float()
