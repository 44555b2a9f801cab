"""Weight formats, in one place: how a float weight matrix is stored for the engines
(`pack` -> C.WeightMatrix, csrc/torch/model_spec.h) and the float values it stands for
(`dequantize`, the readable definition the tests compare the kernels against), and the
precisions an LLM can run at (dtype= of pyruntime.LLM: a weight format and a KV cache type).

- float32, bfloat16: the weights as they are (bfloat16 rounded to nearest even).
- int8: weight-only, one float32 scale per group of 64 (else 32) input features: scale =
  absmax / 127 of the group, q = round(w / scale), as llama.cpp's Q8_0; rows interleaved in
  blocks of 4 where their number allows (one ascending stream per block for the products).
- q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k: GGUF's block formats, rows of
  whole blocks exactly as a GGUF file holds them (uint8 [rows, row bytes]); their values are
  gguf.quants.dequantize's. The `gguf` package quantizes float weights to the 32-value ones
  (q4_0 is dtype="int4"); the k-quants come from GGUF files.
- f16: GGUF's float16 matrices (rows of a multiple of 32 values), their bytes as the file holds
  them (uint8 [rows, 2 * cols]), read by the engines in blocks of 32 like the formats above.

Decode steps multiply q4_0, q4_1, q8_0, q4_k, q5_k and q6_k matrices in integers on the CPU (by
default; int8_activations=False keeps float32): the activations are quantized to 8 bits in
groups of `activation_group` values first, as llama.cpp does (quantize_activations is the
definition). Prompts keep float32 activations (a prompt's tokens get them however much of the
prompt came from the cache); so do decode calls of more than 16 tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from pyruntime._ext import C

try:
    from gguf import GGMLQuantizationType, quants as gguf_quants
except ImportError:  # pragma: no cover - gguf is a dependency; kept importable without it
    GGMLQuantizationType = gguf_quants = None


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
    """Plain int8 rows q [rows, cols] with scales [rows, groups] -> float32 [rows, cols]."""
    group = q.shape[1] // scales.shape[1]
    return (q.float().reshape(q.shape[0], -1, group) * scales.unsqueeze(2)).reshape(q.shape)


def _pack_int8(w: torch.Tensor) -> C.WeightMatrix:
    q, s = quantize_int8(w, int8_group_size(w.shape[1]))
    if q.shape[0] % 4 == 0:
        q, s = pack_int8_rows(q, s)
    return C.WeightMatrix(C.WeightFormat.int8, q, s)


def _dequantize_int8(m: C.WeightMatrix) -> torch.Tensor:
    q, s = m.data, m.scales
    if m.block_rows > 1:  # [rows / B, groups, B, group] -> plain rows
        b, g, r, k = q.shape
        q = q.permute(0, 2, 1, 3).reshape(b * r, g * k)
        s = s.permute(0, 2, 1).reshape(b * r, g)
    return dequantize_int8(q, s)


@dataclass(frozen=True)
class Format:
    name: str
    c: C.WeightFormat
    pack: Callable[[torch.Tensor], C.WeightMatrix]  # float [rows, cols] -> the stored matrix
    dequantize: Callable[[C.WeightMatrix], torch.Tensor]  # the stored matrix -> float32 [rows, cols]
    # Values per group of 8-bit activations in this format's integer products (None: float32).
    activation_group: int | None = None


def _dense(dtype: torch.dtype, c: C.WeightFormat, name: str) -> Format:
    return Format(name, c, lambda w: C.WeightMatrix(c, w.to(dtype).contiguous()), lambda m: m.data.float())


def _gguf_block(name: str) -> Format:
    c = getattr(C.WeightFormat, name)
    qtype = getattr(GGMLQuantizationType, name.upper())

    def pack(w: torch.Tensor) -> C.WeightMatrix:
        try:
            q = gguf_quants.quantize(w.detach().float().cpu().numpy(), qtype)
        except (NotImplementedError, gguf_quants.QuantError) as e:
            raise ValueError(f"cannot quantize a [{w.shape[0]}, {w.shape[1]}] matrix to {name}: {e}") from None
        return C.WeightMatrix(c, torch.from_numpy(q))

    def dequantize(m: C.WeightMatrix) -> torch.Tensor:
        return torch.from_numpy(gguf_quants.dequantize(m.data.cpu().numpy(), qtype)).reshape(m.shape)

    # The formats with integer products (csrc/cpu/linear_q8.h) and their activation groups (the
    # engine's table, kFormats in engine.h): a block for the 32-value formats, a whole k-quant
    # block (llama.cpp's Q8_K) for the k-quants.
    return Format(name, c, pack, dequantize, C.format_activation_group(c) or None)


def quantize_activations(x: torch.Tensor, group: int, bits: int = 8) -> torch.Tensor:
    """The float32 values x [..., n] stands for once quantized to `bits` (8 or 16) bits in groups
    of `group` along its last dimension, as the CPU engine's integer products take it: per group,
    with qmax = 127 (32767), iscale = qmax / max|x| (0 for a zero group, and where that
    overflows: max|x| under ~3.7e-37, or ~9.6e-35 for 16 bits), q = round(x * iscale) (half to even),
    value = q * (max|x| / qmax)."""
    qmax = {8: 127.0, 16: 32767.0}[bits]
    g = x.float().reshape(*x.shape[:-1], -1, group)
    amax = g.abs().amax(-1, keepdim=True)
    # A true division (torch's qmax / t multiplies by a reciprocal, one rounding off the kernels').
    iscale = torch.where(amax > 0, torch.full_like(amax, qmax) / amax, torch.zeros_like(amax))
    iscale = torch.where(torch.isfinite(iscale), iscale, torch.zeros_like(iscale))
    return (torch.round(g * iscale) * (amax / qmax)).reshape(x.shape)


def _f16() -> Format:
    """GGUF's float16 rows as their bytes (uint8 [rows, 2 * cols])."""

    def pack(w: torch.Tensor) -> C.WeightMatrix:
        return C.WeightMatrix(C.WeightFormat.f16, w.detach().to(torch.float16).contiguous().view(torch.uint8))

    return Format("f16", C.WeightFormat.f16, pack, lambda m: m.data.view(torch.float16).float())


# Values per block of the engines' f16 rows (csrc/cpu/engine_spec.cpp): the columns of an f16
# matrix are a multiple of it.
F16_BLOCK = 32

# The GGUF block formats, in ggml's order.
GGUF_BLOCK_FORMATS = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k")

FORMATS = {
    f.name: f
    for f in (
        _dense(torch.float32, C.WeightFormat.float32, "float32"),
        _dense(torch.bfloat16, C.WeightFormat.bfloat16, "bfloat16"),
        Format("int8", C.WeightFormat.int8, _pack_int8, _dequantize_int8),
        *(_gguf_block(name) for name in GGUF_BLOCK_FORMATS),
        _f16(),
    )
}


def format_of(m: C.WeightMatrix) -> Format:
    return FORMATS[m.format.name]


def dequantize(m: C.WeightMatrix) -> torch.Tensor:
    """The float32 [rows, cols] values a stored matrix stands for."""
    return format_of(m).dequantize(m)


@dataclass(frozen=True)
class Precision:
    """What dtype= of an LLM means: the checkpoint read as `load`, every weight matrix stored as
    `weights`, the KV cache kept as `kv` (unless LLM's kv_dtype says otherwise). native: a GGUF
    file's matrices kept in their own types (`weights` only for those that are not: F16 rows whose
    length is not a multiple of F16_BLOCK, and other types the engines lack)."""

    weights: Format
    kv: torch.dtype
    load: torch.dtype
    native: bool = False


PRECISIONS = {
    "float32": Precision(FORMATS["float32"], kv=torch.float32, load=torch.float32),
    "bfloat16": Precision(FORMATS["bfloat16"], kv=torch.bfloat16, load=torch.bfloat16),
    "int8": Precision(FORMATS["int8"], kv=torch.bfloat16, load=torch.float32),
    # 4-bit, group of 32 with a float16 scale each (GGUF's Q4_0), quantized at load.
    "int4": Precision(FORMATS["q4_0"], kv=torch.bfloat16, load=torch.float32),
    # A GGUF file's own types, read from the file's memory map (the default for GGUF models); a
    # 16-bit KV cache, as llama.cpp keeps by default.
    "gguf": Precision(FORMATS["float32"], kv=torch.bfloat16, load=torch.float32, native=True),
}
