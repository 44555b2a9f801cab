"""The compiled CPU engine (csrc/cpu/engine.cpp): one C++ call runs a whole forward step
(embedding, every layer, final norm, LM head) with the weights resident in the engine.

Precisions ("dtype" of LLM): float32 and bfloat16 weights as loaded, or int8 weight-only:
each weight matrix quantised once at load time to int8 with one float32 scale per group of
64 (or 32) input features (absmax / 127, as llama.cpp's Q8_0), activations kept in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pyruntime._ext import C
from pyruntime.config import ModelConfig
from pyruntime.errors import ModelLoadError
from pyruntime.weights import ModelWeights

# Tokens per engine call: a decode batch, or a chunk of a prompt (each weight is read once
# per chunk, so longer chunks read less but hold more activations).
MAX_TOKENS = 256


@dataclass(frozen=True)
class Precision:
    load: torch.dtype  # weights are read from the checkpoint as this
    kv: torch.dtype  # KV cache element type
    quantize: bool = False  # int8 weight-only, from the loaded float32


PRECISIONS = {
    "float32": Precision(torch.float32, torch.float32),
    "bfloat16": Precision(torch.bfloat16, torch.bfloat16),
    "int8": Precision(torch.float32, torch.bfloat16, quantize=True),
}


def int8_group_size(in_features: int) -> int:
    """64, else 32: the int8 group size for in_features input features (ValueError if neither divides it)."""
    return C.int8_group_size(in_features)


def quantize_int8(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """w [rows, cols] float -> (q int8 [rows, cols], scales float32 [rows, cols / group]) with
    w ~= q * scale per group; scale = absmax / 127 of the group (the compiled quantizer)."""
    if w.dim() != 2 or w.shape[1] % group:
        raise ValueError(f"quantize_int8: w must be [rows, cols] with cols divisible by {group}, got {tuple(w.shape)}")
    return C.quantize_int8(w.detach().float().contiguous(), group)


def pack_int8_rows(q: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_int8's rows interleaved in blocks of 4, the CPU engine's faster int8 layout (each
    block's groups one after the other, the block's 4 rows within each): q [rows / 4, groups, 4,
    group], scales [rows / 4, groups, 4]. rows must be a multiple of 4 (ValueError otherwise)."""
    return C.pack_int8_rows(q.contiguous(), scales.contiguous())


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    group = q.shape[1] // scales.shape[1]
    return (q.float().reshape(q.shape[0], -1, group) * scales.unsqueeze(2)).reshape(q.shape)


def _engine_tensors(weights: ModelWeights, cos_sin: torch.Tensor, matrix, vector) -> dict[str, torch.Tensor]:
    """The engines' tensor names: embed, lm_head, final_norm, cos_sin and per layer
    "layers.{i}." qkv, o, gate_up, down, attn_norm, mlp_norm, qkv_bias, o_bias (when present).
    matrix(w) -> {suffix: tensor} ("" the weight itself; int8 adds ".scales"); vector(v) -> tensor.
    A tied LM head shares the embedding's tensors."""
    tensors: dict[str, torch.Tensor] = {}
    done: dict[int, str] = {}  # data_ptr -> name already added

    def add_matrix(name, w):
        if w.data_ptr() in done:
            src = done[w.data_ptr()]
            for key in [k for k in tensors if k == src or k.startswith(src + ".")]:
                tensors[name + key[len(src):]] = tensors[key]
            return
        done[w.data_ptr()] = name
        try:
            parts = matrix(w)
        except ValueError as e:
            raise ModelLoadError(f"{name}: {e}") from None
        for suffix, t in parts.items():
            tensors[name + suffix] = t

    def add_vector(name, v):
        if v is not None:
            tensors[name] = vector(v)

    add_matrix("embed", weights.embed)
    add_matrix("lm_head", weights.lm_head)
    add_vector("final_norm", weights.final_norm)
    for i, layer in enumerate(weights.layers):
        p = f"layers.{i}."
        for name in ("qkv", "o", "gate_up", "down"):
            add_matrix(p + name, getattr(layer, name))
        for name in ("attn_norm", "mlp_norm", "qkv_bias", "o_bias"):
            add_vector(p + name, getattr(layer, name))
    tensors["cos_sin"] = cos_sin.float().contiguous()
    return tensors


def _engine_config(cfg: ModelConfig, max_seq_len: int) -> dict[str, float]:
    return {
        "hidden": cfg.hidden_size, "inter": cfg.intermediate_size, "num_heads": cfg.num_heads,
        "num_kv_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "vocab": cfg.vocab_size,
        "num_layers": cfg.num_layers, "max_seq": max_seq_len, "rot_dim": cfg.rotary_dim,
        "is_neox": 1.0, "eps": cfg.rms_norm_eps, "scale": cfg.head_dim**-0.5, "max_tokens": MAX_TOKENS,
    }


def _distinct_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes of distinct weight tensors (norms and biases included; not the rope table)."""
    seen, total = set(), 0
    for name, t in tensors.items():
        if name != "cos_sin" and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


class CpuEngine:
    """Owns the engine's tensors (float32 norms and biases, weights in their storage format)."""

    def __init__(self, cfg: ModelConfig, weights: ModelWeights, cos_sin: torch.Tensor, dtype: str,
                 max_seq_len: int, threads: int):
        prec = PRECISIONS[dtype]
        self.kv_dtype = prec.kv

        def matrix(w):
            if prec.quantize:
                q, s = quantize_int8(w, int8_group_size(w.shape[1]))
                if q.shape[0] % 4 == 0:  # one ascending stream per block of rows (see pack_int8_rows)
                    q, s = pack_int8_rows(q, s)
                return {"": q, ".scales": s}
            return {"": w.contiguous()}

        self.tensors = _engine_tensors(weights, cos_sin, matrix, lambda v: v.float().contiguous())
        self.engine = C.Engine({**_engine_config(cfg, max_seq_len), "threads": threads}, dtype, prec.kv, self.tensors)
        self.max_tokens = self.engine.max_tokens
        self.vocab = cfg.vocab_size

    def nbytes(self) -> int:
        return _distinct_bytes(self.tensors)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor, k_cache, v_cache,
                first_logit: int) -> torch.Tensor:
        """At most max_tokens tokens (int64 [n] each); float32 logits [n - first_logit, V]."""
        logits = torch.empty(tokens.shape[0] - first_logit, self.vocab)
        self.engine.forward(tokens, positions, rows, k_cache, v_cache, logits, first_logit)
        return logits


class CudaEngine:
    """The CUDA engine (csrc/cuda/engine.cu): every tensor, norms included, in bfloat16 on the
    GPU; decode steps replayed from CUDA graphs. Compiled in CI (no GPU there); tested on an H100."""

    def __init__(self, cfg: ModelConfig, weights: ModelWeights, cos_sin: torch.Tensor, max_seq_len: int):
        device = weights.embed.device
        self.kv_dtype = torch.bfloat16
        to = lambda t: t.to(device=device, dtype=torch.bfloat16).contiguous()  # noqa: E731
        self.tensors = _engine_tensors(weights, cos_sin.to(device), lambda w: {"": to(w)}, to)
        self.engine = C.CudaEngine(_engine_config(cfg, max_seq_len), torch.bfloat16, self.tensors)
        self.max_tokens = self.engine.max_tokens
        self.vocab = cfg.vocab_size
        self.device = device

    def nbytes(self) -> int:
        return _distinct_bytes(self.tensors)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor, k_cache, v_cache,
                first_logit: int) -> torch.Tensor:
        """tokens, positions, rows: int64 [n] on the CPU; float32 logits [n - first_logit, V] on the GPU."""
        logits = torch.empty(tokens.shape[0] - first_logit, self.vocab, device=self.device)
        stream = torch.cuda.current_stream(self.device).cuda_stream
        self.engine.forward(tokens.cpu(), positions.cpu(), rows.cpu(), k_cache, v_cache, logits, first_logit, stream)
        return logits
