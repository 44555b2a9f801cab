"""The compiled ops, as typed Python functions over torch tensors.

Every op runs on the CPU (float32, bfloat16) and, in a CUDA build, on CUDA (float32,
bfloat16, float16); arithmetic is float32 whatever the storage. Shapes use: T tokens,
B batch, H hidden, I intermediate, Hq / Hkv query / key-value heads, D head size, S_max
cache length.

Misuse raises an error naming the op and the argument: TypeError for a wrong kind of value
(a list where a tensor goes; a string, None or a bool where a number goes), ValueError for
a wrong value (shape, dtype, device, range, NaN). Numbers may be Python, numpy or 0-d torch
real scalars. The tensors of one call must share one device; when all are on the meta
device the op returns a meta result of the right shape and computes nothing, as a Meta
kernel does (the compiled shape and dtype checks do not run then).
"""

from __future__ import annotations

import math
import numbers

import torch

from pyruntime._ext import C

_ops = torch.ops.pyruntime


# Argument checks shared by every op (the compiled ops check shapes, dtypes and ranges; what
# they cannot see is checked here: Python types, and mixed devices, which the dispatcher
# routes to the Meta kernel when one tensor is on meta).


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor(shape={tuple(x.shape)}, dtype={x.dtype}, device={x.device})"
    r, t = repr(x), type(x)
    kind = t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
    return f"{r if len(r) <= 40 else r[:37] + '...'} ({kind})"


def _tensors(op: str, **named: torch.Tensor) -> None:
    """Each argument is a tensor, all on the device of the first."""
    ref_name = ref_device = None
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {_describe(t)}")
        if ref_name is None:
            ref_name, ref_device = name, t.device
        elif t.device != ref_device:
            raise ValueError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref_device}")


def _same_dtype(op: str, **named: torch.Tensor) -> None:
    """All arguments have the dtype of the first (for paths that bypass the compiled checks)."""
    (ref_name, ref), *rest = named.items()
    for name, t in rest:
        if t.dtype != ref.dtype:
            raise ValueError(f"{op}: {name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}")


def _scalar(x: object, integer_only: bool) -> int | float | None:
    """x as a Python int or float if it is a real scalar (Python, numpy, or a 0-d torch
    tensor; a bool is not a number), else None; floats are refused when integer_only."""
    if type(x) is int or (type(x) is float and not integer_only):
        return x
    if isinstance(x, torch.Tensor):
        if x.dim() != 0 or x.is_meta or x.dtype == torch.bool or x.is_complex():
            return None
        x = x.item()
    elif getattr(x, "ndim", None) == 0 and getattr(getattr(x, "dtype", None), "kind", None) in ("i", "u", "f"):
        x = x.item()  # numpy scalars and 0-d arrays
    if isinstance(x, bool):
        return None
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Real) and not integer_only:
        return x
    return None


def _number(op: str, name: str, x: object, *, min: float | None = None) -> float:
    """x as a finite float (>= min when given)."""
    v = _scalar(x, integer_only=False)
    if v is not None:
        try:
            v = float(v)
        except OverflowError:  # an int beyond float's range
            v = math.inf
        if math.isfinite(v) and (min is None or v >= min):
            return v
    what = "a finite non-negative number" if min == 0 else "a finite number" + ("" if min is None else f" >= {min}")
    raise (TypeError if v is None else ValueError)(f"{op}: {name} must be {what}, got {_describe(x)}")


def _integer(op: str, name: str, x: object, *, min: int = 0) -> int:
    """x as an int >= min (a float, even a whole one, is refused: it is a mistake upstream)."""
    v = _scalar(x, integer_only=True)
    if v is not None and v >= min:
        return v
    what = "a non-negative integer" if min == 0 else f"an integer >= {min}"
    raise (TypeError if v is None else ValueError)(f"{op}: {name} must be {what}, got {_describe(x)}")


def _bool(op: str, name: str, x: object) -> bool:
    if not isinstance(x, bool):
        raise TypeError(f"{op}: {name} must be a bool, got {_describe(x)}")
    return x


def _as_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension [..., H], got a scalar")
    return x if x.dim() == 2 else x.reshape(-1, x.shape[-1])


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x [..., H], weight [H] -> x * rsqrt(mean(x^2) + eps) * weight, [..., H] in x's dtype."""
    _tensors("rms_norm", x=x, weight=weight)
    eps = _number("rms_norm", "eps", eps, min=0.0)
    rows = _as_rows(x, "x")
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    _ops.rms_norm(out, rows, weight, eps)
    return out.view(x.shape)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6
) -> None:
    """In place on x [..., H] and residual [..., H]: residual += x; x = rms_norm(residual)."""
    _tensors("fused_add_rms_norm", x=x, residual=residual, weight=weight)
    eps = _number("fused_add_rms_norm", "eps", eps, min=0.0)
    if x.shape != residual.shape:
        raise ValueError(f"residual must have the shape of x {tuple(x.shape)}, got {tuple(residual.shape)}")
    if x.dim() != 2:
        if not (x.is_contiguous() and residual.is_contiguous()):
            raise ValueError("x and residual must be contiguous when they are not 2-D")
        x, residual = _as_rows(x, "x"), _as_rows(residual, "residual")
    _ops.fused_add_rms_norm(x, residual, weight, eps)


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
    _tensors("rotary_embedding", q=q, k=k, positions=positions, cos_sin_cache=cos_sin_cache)
    _ops.rotary_embedding(positions, q, k, cos_sin_cache, _bool("rotary_embedding", "is_neox", is_neox))


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
    op = "rotary_embedding_and_cache"
    _tensors(op, q=q, k=k, v=v, positions=positions, k_cache=k_cache, v_cache=v_cache, cos_sin_cache=cos_sin_cache)
    _ops.rotary_embedding_and_cache(positions, q, k, v, k_cache, v_cache, cos_sin_cache, _bool(op, "is_neox", is_neox))


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2I] -> silu(x[..., :I]) * x[..., I:], [..., I]."""
    _tensors("silu_and_mul", x=x)
    rows = _as_rows(x, "x")
    out = torch.empty((rows.shape[0], rows.shape[1] // 2), dtype=x.dtype, device=x.device)
    _ops.silu_and_mul(out, rows)
    return out.view(*x.shape[:-1], rows.shape[1] // 2)


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [T, K], weight [N, K] -> x @ weight.T, [T, N] in x's dtype. For T <= 16 on the CPU
    each weight row is read once for all tokens and every token's result is independent of
    the others (batch-invariant); longer inputs use torch's matrix product."""
    _tensors("linear", x=x, weight=weight)
    out = torch.empty((x.shape[0] if x.dim() else 0, weight.shape[0] if weight.dim() else 0), dtype=x.dtype, device=x.device)
    _ops.linear(out, x, weight)
    return out


def gated_mlp(x: torch.Tensor, gate_up_weight: torch.Tensor, down_weight: torch.Tensor) -> torch.Tensor:
    """x [T, H], gate_up_weight [2I, H] (gate rows, then up rows), down_weight [H, I]
    -> down(silu(gate x) * up x), [T, H]. For T <= 16 one fused pass keeps the
    intermediate in per-thread buffers; longer inputs use torch's matrix products."""
    _tensors("gated_mlp", x=x, gate_up_weight=gate_up_weight, down_weight=down_weight)
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
    _tensors("gqa_decode_attention", q=q, k_cache=k_cache, v_cache=v_cache, seq_lens=seq_lens)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.dim() > 0 and q.shape[-1] > 0 else 1.0
    else:
        scale = _number("gqa_decode_attention", "scale", scale)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    _ops.gqa_decode_attention(out, q, k_cache, v_cache, seq_lens, scale)
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
    op = "prefill_attention"
    _tensors(op, q=q, k_cache=k_cache, v_cache=v_cache)
    _same_dtype(op, q=q, k_cache=k_cache, v_cache=v_cache)
    start_pos = _integer(op, "start_pos", start_pos)
    scale = None if scale is None else _number(op, "scale", scale)
    if q.dim() != 3 or k_cache.dim() != 3 or v_cache.dim() != 3:
        raise ValueError("q must be [T, Hq, D] and k_cache, v_cache [Hkv, S_max, D]")
    t, hq, d = q.shape
    hkv, s_max, dk = k_cache.shape
    if dk != d or v_cache.shape != k_cache.shape:
        raise ValueError(f"k_cache/v_cache {tuple(k_cache.shape)} do not match q {tuple(q.shape)}")
    if hkv == 0 or hq % hkv:
        raise ValueError(f"num_q_heads {hq} must be a multiple of num_kv_heads {hkv}")
    end = start_pos + t
    if end > s_max:
        raise ValueError(f"start_pos {start_pos} + tokens {t} must lie within the cache length {s_max}")
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    if q.device.type == "cpu":
        out = torch.empty(q.shape, dtype=q.dtype)
        _ops.prefill_attention(out, q, k_cache, v_cache, start_pos, scale)
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
    """The instruction-set level the CPU kernels run at now (pyruntime.cpu_features())."""
    return C.cpu_isa()


def with_cuda() -> bool:
    """Whether this build contains the CUDA kernels."""
    return bool(C.with_cuda)


# Fake (meta) implementations: they compute nothing, so they check what the compiled ones
# would have refused before anything else: an argument on another device (the dispatcher
# sends a call with one meta tensor among CPU ones here).


@torch.library.register_fake("pyruntime::rms_norm")
def _(out, x, weight, eps):
    _tensors("pyruntime::rms_norm", out=out, x=x, weight=weight)


@torch.library.register_fake("pyruntime::fused_add_rms_norm")
def _(x, residual, weight, eps):
    _tensors("pyruntime::fused_add_rms_norm", x=x, residual=residual, weight=weight)


@torch.library.register_fake("pyruntime::rotary_embedding")
def _(positions, q, k, cos_sin_cache, is_neox):
    _tensors("pyruntime::rotary_embedding", q=q, k=k, positions=positions, cos_sin_cache=cos_sin_cache)


@torch.library.register_fake("pyruntime::rotary_embedding_and_cache")
def _(positions, q, k, v, k_cache, v_cache, cos_sin_cache, is_neox):
    _tensors("pyruntime::rotary_embedding_and_cache", q=q, k=k, v=v, positions=positions, k_cache=k_cache,
             v_cache=v_cache, cos_sin_cache=cos_sin_cache)


@torch.library.register_fake("pyruntime::silu_and_mul")
def _(out, x):
    _tensors("pyruntime::silu_and_mul", out=out, x=x)


@torch.library.register_fake("pyruntime::gated_mlp")
def _(out, x, gate_up_weight, down_weight):
    _tensors("pyruntime::gated_mlp", out=out, x=x, gate_up_weight=gate_up_weight, down_weight=down_weight)


@torch.library.register_fake("pyruntime::gqa_decode_attention")
def _(out, q, k_cache, v_cache, seq_lens, scale):
    _tensors("pyruntime::gqa_decode_attention", out=out, q=q, k_cache=k_cache, v_cache=v_cache, seq_lens=seq_lens)


@torch.library.register_fake("pyruntime::prefill_attention")
def _(out, q, k_cache, v_cache, start_pos, scale):
    _tensors("pyruntime::prefill_attention", out=out, q=q, k_cache=k_cache, v_cache=v_cache)


@torch.library.register_fake("pyruntime::linear")
def _(out, x, weight):
    _tensors("pyruntime::linear", out=out, x=x, weight=weight)
