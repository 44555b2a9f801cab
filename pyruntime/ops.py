"""The compiled ops, as typed Python functions over torch tensors.

Every op runs on the CPU (float32, bfloat16) and, in a CUDA build, on CUDA (float32,
bfloat16, float16); arithmetic is float32 whatever the storage. Misuse raises
ValueError naming the argument. Shapes use: T tokens, B batch, H hidden, I intermediate,
Hq / Hkv query / key-value heads, D head size, S_max cache length.
"""

from __future__ import annotations

import math

import torch

from pyruntime._ext import C

_ops = torch.ops.pyruntime


def _as_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension [..., H], got a scalar")
    return x if x.dim() == 2 else x.reshape(-1, x.shape[-1])


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x [..., H], weight [H] -> x * rsqrt(mean(x^2) + eps) * weight, [..., H] in x's dtype."""
    rows = _as_rows(x, "x")
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    _ops.rms_norm(out, rows, weight, float(eps))
    return out.view(x.shape)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6
) -> None:
    """In place on x [..., H] and residual [..., H]: residual += x; x = rms_norm(residual)."""
    if x.shape != residual.shape:
        raise ValueError(f"residual must have the shape of x {tuple(x.shape)}, got {tuple(residual.shape)}")
    if x.dim() != 2:
        if not (x.is_contiguous() and residual.is_contiguous()):
            raise ValueError("x and residual must be contiguous when they are not 2-D")
        x, residual = _as_rows(x, "x"), _as_rows(residual, "residual")
    _ops.fused_add_rms_norm(x, residual, weight, float(eps))


def rotary_embedding(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool = True,
) -> None:
    """In place rotary embedding.

    positions int64 [T]; q [T, Hq, D]; k [T, Hkv, D] (last dim contiguous);
    cos_sin_cache float32 [max_pos, rot_dim] (cos half, then sin half), rot_dim <= D.
    is_neox: rotate-half layout (Hugging Face Llama); False: interleaved pairs (GPT-J).
    """
    _ops.rotary_embedding(positions, q, k, cos_sin_cache, bool(is_neox))


def rotary_embedding_and_cache(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool = True,
) -> None:
    """The fused decode step of RoPE: rotate q and k of the new tokens in place and write
    k and v into the cache at their positions, in one pass.

    positions int64 [B, T]; q [B, T, Hq, D]; k, v [B, T, Hkv, D];
    k_cache, v_cache [B, Hkv, S_max, D] contiguous: k_cache[b, :, positions[b, t]] = rotated
    k[b, t]. Positions must be < min(S_max, max_pos).
    """
    _ops.rotary_embedding_and_cache(positions, q, k, v, k_cache, v_cache, cos_sin_cache, bool(is_neox))


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2I] -> silu(x[..., :I]) * x[..., I:], [..., I]."""
    rows = _as_rows(x, "x")
    out = torch.empty((rows.shape[0], rows.shape[1] // 2), dtype=x.dtype, device=x.device)
    _ops.silu_and_mul(out, rows)
    return out.view(*x.shape[:-1], rows.shape[1] // 2)


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [T, K], weight [N, K] -> x @ weight.T, [T, N] in x's dtype. For T <= 16 on the CPU
    each weight row is read once for all tokens and every token's result is independent of
    the others (batch-invariant); longer inputs use torch's matrix product."""
    out = torch.empty((x.shape[0] if x.dim() else 0, weight.shape[0] if weight.dim() else 0), dtype=x.dtype, device=x.device)
    _ops.linear(out, x, weight)
    return out


def gated_mlp(x: torch.Tensor, gate_up_weight: torch.Tensor, down_weight: torch.Tensor) -> torch.Tensor:
    """x [T, H], gate_up_weight [2I, H] (gate rows, then up rows), down_weight [H, I]
    -> down(silu(gate x) * up x), [T, H]. For T <= 16 one fused pass keeps the
    intermediate in per-thread buffers; longer inputs use torch's matrix products."""
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    _ops.gated_mlp(out, x, gate_up_weight, down_weight)
    return out


def gqa_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """One query token per sequence against its KV cache (grouped-query attention).

    q [B, Hq, D]; k_cache, v_cache [B, Hkv, S_max, D] contiguous; seq_lens int32 [B] with
    1 <= seq_lens[b] <= S_max (the cache already holds the current token); Hq a multiple
    of Hkv; scale defaults to 1/sqrt(D). Returns [B, Hq, D] in q's dtype.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.dim() > 0 and q.shape[-1] > 0 else 1.0
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    _ops.gqa_decode_attention(out, q, k_cache, v_cache, seq_lens, float(scale))
    return out


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start_pos: int,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal attention of a chunk of prompt tokens against one sequence's cache.

    q [T, Hq, D] for positions start_pos .. start_pos+T-1; k_cache, v_cache [Hkv, S_max, D]
    already holding positions 0 .. start_pos+T-1. Returns [T, Hq, D] in q's dtype. On the
    CPU a compiled flash-attention style kernel (blocks of 32 query tokens against blocks of
    64 keys, online softmax in float32); on CUDA torch's scaled_dot_product_attention.
    """
    if q.dim() != 3 or k_cache.dim() != 3 or v_cache.dim() != 3:
        raise ValueError("q must be [T, Hq, D] and k_cache, v_cache [Hkv, S_max, D]")
    t, hq, d = q.shape
    hkv, s_max, dk = k_cache.shape
    if dk != d or v_cache.shape != k_cache.shape:
        raise ValueError(f"k_cache/v_cache {tuple(k_cache.shape)} do not match q {tuple(q.shape)}")
    if hkv == 0 or hq % hkv:
        raise ValueError(f"num_q_heads {hq} must be a multiple of num_kv_heads {hkv}")
    end = start_pos + t
    if start_pos < 0 or end > s_max:
        raise ValueError(f"start_pos {start_pos} + tokens {t} must lie within the cache length {s_max}")
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    if q.device.type == "cpu":
        out = torch.empty(q.shape, dtype=q.dtype)
        _ops.prefill_attention(out, q, k_cache, v_cache, int(start_pos), float(scale))
        return out
    k = k_cache[:, :end]
    v = v_cache[:, :end]
    # Query i (absolute position start_pos + i) sees keys 0 .. start_pos + i.
    mask = torch.ones(t, end, dtype=torch.bool, device=q.device).tril(diagonal=start_pos)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k, v, attn_mask=mask, scale=scale, enable_gqa=hq != hkv
    )
    return out.transpose(0, 1)


def cpu_isa() -> str:
    """The SIMD instruction set the CPU kernels were compiled for."""
    return C.cpu_isa()


def with_cuda() -> bool:
    """Whether this build contains the CUDA kernels."""
    return bool(C.with_cuda)


@torch.library.register_fake("pyruntime::rms_norm")
def _(out, x, weight, eps):
    return None


@torch.library.register_fake("pyruntime::fused_add_rms_norm")
def _(x, residual, weight, eps):
    return None


@torch.library.register_fake("pyruntime::rotary_embedding")
def _(positions, q, k, cos_sin_cache, is_neox):
    return None


@torch.library.register_fake("pyruntime::rotary_embedding_and_cache")
def _(positions, q, k, v, k_cache, v_cache, cos_sin_cache, is_neox):
    return None


@torch.library.register_fake("pyruntime::silu_and_mul")
def _(out, x):
    return None


@torch.library.register_fake("pyruntime::gated_mlp")
def _(out, x, gate_up_weight, down_weight):
    return None


@torch.library.register_fake("pyruntime::gqa_decode_attention")
def _(out, q, k_cache, v_cache, seq_lens, scale):
    return None


@torch.library.register_fake("pyruntime::linear")
def _(out, x, weight):
    return None
