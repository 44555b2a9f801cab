"""The decoder's forward pass: prefill of one sequence's prompt chunk, and one decode step
for a batch of sequences. On the CPU both run in the compiled engine (engine.py), one C++
call per chunk or step; on CUDA in bfloat16 the CUDA engine does the same (decode steps as
CUDA graphs); float32 on CUDA sequences the layers here from the compiled ops."""

from __future__ import annotations

import torch

from pyruntime import ops
from pyruntime._ext import C
from pyruntime.config import ModelConfig, cos_sin_cache
from pyruntime.engine import CpuEngine, CudaEngine
from pyruntime.errors import ModelLoadError
from pyruntime.kv_cache import KVCache
from pyruntime.weights import ModelWeights

# Decode steps run in groups of at most this many sequences: the row-wise kernels then
# give every sequence exactly the result it would get alone.
DECODE_GROUP = C.max_row_tile_tokens


def check_supported(cfg: ModelConfig, source) -> None:
    """Raises ModelLoadError when the kernels cannot run this configuration."""
    if cfg.head_dim not in C.supported_head_dims():
        raise ModelLoadError(
            f"{source}: head_dim {cfg.head_dim} is not supported by the attention kernels "
            f"(supported: {', '.join(map(str, C.supported_head_dims()))})"
        )


class Transformer:
    def __init__(self, cfg: ModelConfig, weights: ModelWeights, max_seq_len: int, dtype: str = "float32",
                 threads: int = 0):
        self.cfg = cfg
        self.device = weights.embed.device
        cos_sin = cos_sin_cache(cfg.rope, cfg.rotary_dim, max_seq_len)
        if self.device.type == "cpu":
            self.engine = CpuEngine(cfg, weights, cos_sin, dtype, max_seq_len, threads)
            self.w = None  # the engine holds what it needs (int8: only the quantised weights)
            self.weight_bytes = self.engine.nbytes()
        elif dtype == "bfloat16" and hasattr(C, "CudaEngine"):
            self.engine = CudaEngine(cfg, weights, cos_sin, max_seq_len)
            self.w = None
            self.weight_bytes = self.engine.nbytes()
        else:  # float32 on CUDA: the layers sequenced from Python over the compiled ops
            self.engine = None
            self.w = weights
            self.weight_bytes = weights.nbytes()
            self.cos_sin = cos_sin.to(self.device)
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

    def _out_proj(self, layer, attn):
        out = ops.linear(attn, layer.o)
        if layer.o_bias is not None:
            out += layer.o_bias
        return out

    def _mlp(self, layer, x):
        return ops.gated_mlp(x, layer.gate_up, layer.down)

    def _run_layers(self, tokens: torch.Tensor, attend) -> torch.Tensor:
        """The residual stream through every layer; attend(i, layer, q, k, v) -> [T, Hq*D].
        Returns the final-normed hidden states [T, H]."""
        cfg, w = self.cfg, self.w
        residual = w.embed[tokens]  # [T, H]
        x = ops.rms_norm(residual, w.layers[0].attn_norm, cfg.rms_norm_eps)
        for i, layer in enumerate(w.layers):
            q, k, v = self._attention_inputs(layer, x)
            x = self._out_proj(layer, attend(i, q, k, v))
            ops.fused_add_rms_norm(x, residual, layer.mlp_norm, cfg.rms_norm_eps)
            x = self._mlp(layer, x)
            next_norm = w.layers[i + 1].attn_norm if i + 1 < len(w.layers) else w.final_norm
            ops.fused_add_rms_norm(x, residual, next_norm, cfg.rms_norm_eps)
        return x

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, cache: KVCache, row: int, start_pos: int, all_logits: bool = False):
        """tokens int64 [T] at positions start_pos.. of sequence `row` of the cache (which holds
        positions < start_pos already). Returns float32 logits [V] of the last token, or
        [T, V] of every token with all_logits."""
        t = tokens.shape[0]
        if self.engine is not None:
            return self._engine_prefill(tokens, cache, row, start_pos, all_logits)
        positions = torch.arange(start_pos, start_pos + t, device=self.device).view(1, t)

        def attend(i, q, k, v):
            kc, vc = cache.k[i, row : row + 1], cache.v[i, row : row + 1]
            ops.rotary_embedding_and_cache(positions, q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), kc, vc, self.cos_sin)
            out = ops.prefill_attention(q, kc[0], vc[0], start_pos, self.scale)
            return out.reshape(t, -1)

        x = self._run_layers(tokens, attend)
        logits = ops.linear(x if all_logits else x[-1:], self.w.lm_head).float()
        return logits if all_logits else logits[0]

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One step for sequences 0..B-1 of the cache: tokens int64 [B] at positions int64 [B].
        Returns float32 logits [B, V]."""
        b = tokens.shape[0]
        if self.engine is not None:
            # Groups of DECODE_GROUP keep the engine on its row tiles (larger calls take the
            # GEMM, whose rounding differs): every sequence gets exactly its result alone.
            n = DECODE_GROUP
            out = [self.engine.forward(tokens[g0 : g0 + n], positions[g0 : g0 + n],
                                       torch.arange(g0, min(b, g0 + n)), cache.k, cache.v, 0)
                   for g0 in range(0, b, n)]
            return torch.cat(out) if len(out) > 1 else out[0]
        out = []
        for g0 in range(0, b, DECODE_GROUP):
            g1 = min(b, g0 + DECODE_GROUP)
            out.append(self._decode_group(tokens[g0:g1], positions[g0:g1], cache, g0, g1))
        return torch.cat(out) if len(out) > 1 else out[0]

    def _engine_prefill(self, tokens, cache, row, start_pos, all_logits):
        t, n = tokens.shape[0], self.engine.max_tokens
        rows = torch.full((min(t, n),), row, dtype=torch.int64)
        out = []
        for c0 in range(0, t, n):
            c1 = min(t, c0 + n)
            positions = torch.arange(start_pos + c0, start_pos + c1)
            # Logits of every token, or of the prompt's last one: earlier chunks only fill the cache.
            first = 0 if all_logits else (c1 - c0 - 1 if c1 == t else c1 - c0)
            logits = self.engine.forward(tokens[c0:c1], positions, rows[: c1 - c0], cache.k, cache.v, first)
            if logits.shape[0]:
                out.append(logits)
        logits = torch.cat(out) if len(out) > 1 else out[0]
        return logits if all_logits else logits[0]

    def _decode_group(self, tokens, positions, cache, r0, r1):
        n = r1 - r0
        pos = positions.view(n, 1)
        seq_lens = (positions + 1).to(torch.int32)
        cfg = self.cfg

        def attend(i, q, k, v):
            kc, vc = cache.k[i, r0:r1], cache.v[i, r0:r1]
            ops.rotary_embedding_and_cache(pos, q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), kc, vc, self.cos_sin)
            out = ops.gqa_decode_attention(q.contiguous(), kc, vc, seq_lens, self.scale)
            return out.view(n, cfg.q_size)

        x = self._run_layers(tokens, attend)
        return ops.linear(x, self.w.lm_head).float()
