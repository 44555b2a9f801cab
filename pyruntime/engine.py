"""The engines an LLM runs on, one interface: prefill(tokens, row, start_pos) and
decode(tokens, positions) over a KV cache the engine owns, kv(layer) to read that cache back
in the public layout, weight_bytes.

- CpuEngine: the compiled CPU engine (csrc/cpu/engine.cpp, at the instruction-set level chosen
  at run time): one C++ call runs a whole forward step (embedding, every layer, final norm, LM
  head) with the weights resident in the engine.
- CudaEngine: the CUDA engine (csrc/cuda/engine.cu), bfloat16, decode steps as CUDA graphs.
- reference.TorchReference: the same forward sequenced in Python over pyruntime.ops; the
  fallback where no compiled engine exists (float32 on CUDA) and the tests' oracle.

Precisions ("dtype" of LLM): float32 and bfloat16 weights as loaded, or int8 weight-only:
each weight matrix quantised once at load time to int8 with one float32 scale per group of
64 (or 32) input features (absmax / 127, as llama.cpp's Q8_0), activations kept in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pyruntime._ext import C
from pyruntime.config import ModelConfig, cos_sin_cache
from pyruntime.errors import ModelLoadError
from pyruntime.kv_cache import KVCache
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


def check_supported(cfg: ModelConfig, source) -> None:
    """Raises ModelLoadError when the kernels cannot run this configuration."""
    if cfg.head_dim not in C.supported_head_dims():
        raise ModelLoadError(
            f"{source}: head_dim {cfg.head_dim} is not supported by the attention kernels "
            f"(supported: {', '.join(map(str, C.supported_head_dims()))})"
        )


class Engine:
    """What every engine shares: the KV cache it owns (KVCache, one row per sequence; grown by
    ensure_rows), prompt chunks and decode groups cut to the compiled step's limits. Subclasses
    provide _forward(tokens, positions, rows, first_logit) -> float32 logits."""

    # Decode steps run in groups of at most this many sequences: the row-wise kernels then
    # give every sequence exactly the result it would get alone.
    decode_group = C.max_row_tile_tokens

    def __init__(self, cfg: ModelConfig, max_seq_len: int, kv_dtype: torch.dtype, device):
        self.cfg = cfg
        self.max_seq_len = max_seq_len
        self.kv_dtype = kv_dtype
        self.device = torch.device(device)
        self.cache = self._new_cache(1)

    def _new_cache(self, rows: int) -> KVCache:
        c = self.cfg
        return KVCache(c.num_layers, rows, c.num_kv_heads, self.max_seq_len, c.head_dim, self.kv_dtype, self.device)

    def ensure_rows(self, rows: int) -> None:
        """A cache of at least `rows` sequences; growing it drops what it held."""
        if self.cache.batch < rows:
            self.cache = self._new_cache(rows)

    @property
    def weight_bytes(self) -> int:
        """Bytes of distinct weight tensors the engine holds (int8: values and scales)."""
        return _distinct_bytes(self.tensors)

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, row: int, start_pos: int, all_logits: bool = False) -> torch.Tensor:
        """tokens int64 [T] at positions start_pos.. of cache row `row` (which holds positions
        < start_pos already). Returns float32 logits [V] of the last token, or [T, V] of every
        token with all_logits."""
        t, n = tokens.shape[0], self.max_tokens
        rows = torch.full((min(t, n),), row, dtype=torch.int64)
        out = []
        for c0 in range(0, t, n):
            c1 = min(t, c0 + n)
            positions = torch.arange(start_pos + c0, start_pos + c1)
            # Logits of every token, or of the prompt's last one: earlier chunks only fill the cache.
            first = 0 if all_logits else (c1 - c0 - 1 if c1 == t else c1 - c0)
            logits = self._forward(tokens[c0:c1], positions, rows[: c1 - c0], first)
            if logits.shape[0]:
                out.append(logits)
        logits = torch.cat(out) if len(out) > 1 else out[0]
        return logits if all_logits else logits[0]

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One step for cache rows 0..B-1: tokens int64 [B] at positions int64 [B]. Returns
        float32 logits [B, V]."""
        b, n = tokens.shape[0], self.decode_group
        out = [self._forward(tokens[g0 : g0 + n], positions[g0 : g0 + n], torch.arange(g0, min(b, g0 + n)), 0)
               for g0 in range(0, b, n)]
        return torch.cat(out) if len(out) > 1 else out[0]

    def kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer`'s K and V as [B, Hkv, S, D] tensors in the public layout (position s of
        row b at [b, :, s]), whatever order the engine keeps them in. Copies for the CPU engine's
        key tiles; views otherwise."""
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.cfg.num_layers:
            raise ValueError(f"layer must be an int in [0, {self.cfg.num_layers}), got {layer!r}")
        return self.cache.k[layer], self.cache.v[layer]


class CpuEngine(Engine):
    """The compiled CPU engine; owns its tensors (float32 norms and biases, weights in their
    storage format) and its KV cache. `handle` is the C++ engine (forward over caches the caller
    passes; the tests of its argument checks use it)."""

    def __init__(self, cfg: ModelConfig, weights: ModelWeights, dtype: str, max_seq_len: int, threads: int):
        prec = PRECISIONS[dtype]

        def matrix(w):
            if prec.quantize:
                q, s = quantize_int8(w, int8_group_size(w.shape[1]))
                if q.shape[0] % 4 == 0:  # one ascending stream per block of rows (see pack_int8_rows)
                    q, s = pack_int8_rows(q, s)
                return {"": q, ".scales": s}
            return {"": w.contiguous()}

        cos_sin = cos_sin_cache(cfg.rope, cfg.rotary_dim, max_seq_len)
        self.tensors = _engine_tensors(weights, cos_sin, matrix, lambda v: v.float().contiguous())
        self.handle = C.Engine({**_engine_config(cfg, max_seq_len), "threads": threads}, dtype, prec.kv, self.tensors)
        self.max_tokens = self.handle.max_tokens
        super().__init__(cfg, max_seq_len, prec.kv, "cpu")

    @property
    def threads(self) -> int:
        return self.handle.threads

    @property
    def isa(self) -> str:
        """The instruction-set level whose kernels this engine runs (pyruntime.cpu_features())."""
        return self.handle.isa

    def set_profiling(self, on: bool) -> None:
        """Timers around every phase of every step; switching them on clears earlier events."""
        self.handle.set_profiling(on)

    def profile(self) -> list[tuple[int, int, str, int, int]]:
        """(call, layer, op, begin_ns, end_ns) of every engine call since profiling was switched on."""
        return self.handle.profile()

    def _forward(self, tokens, positions, rows, first_logit):
        logits = torch.empty(tokens.shape[0] - first_logit, self.cfg.vocab_size)
        self.handle.forward(tokens, positions, rows, self.cache.k, self.cache.v, logits, first_logit)
        return logits

    def kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = super().kv(layer)
        if self.max_seq_len % KEY_TILE:
            return k, v
        # Key tiles (csrc/cpu/attention_internal.h): per head, tiles of KEY_TILE keys holding the
        # features row by row, pairs of features side by side in bfloat16.
        pair = 2 if k.element_size() == 2 else 1
        b, h, s, d = k.shape
        tiles = k.reshape(b, h, s // KEY_TILE, d // pair, KEY_TILE, pair)
        return tiles.permute(0, 1, 2, 4, 3, 5).reshape(b, h, s, d), v


# Keys per tile of the CPU engine's K cache (used when max_seq_len is a multiple of it).
KEY_TILE = 16


class CudaEngine(Engine):
    """The CUDA engine (csrc/cuda/engine.cu): every tensor, norms included, in bfloat16 on the
    GPU; decode steps replayed from CUDA graphs. Compiled in CI (no GPU there); tested on an H100."""

    def __init__(self, cfg: ModelConfig, weights: ModelWeights, max_seq_len: int):
        device = weights.embed.device
        to = lambda t: t.to(device=device, dtype=torch.bfloat16).contiguous()  # noqa: E731
        cos_sin = cos_sin_cache(cfg.rope, cfg.rotary_dim, max_seq_len).to(device)
        self.tensors = _engine_tensors(weights, cos_sin, lambda w: {"": to(w)}, to)
        self.handle = C.CudaEngine(_engine_config(cfg, max_seq_len), torch.bfloat16, self.tensors)
        self.max_tokens = self.handle.max_tokens
        super().__init__(cfg, max_seq_len, torch.bfloat16, device)

    def _forward(self, tokens, positions, rows, first_logit):
        """tokens, positions, rows: int64 [n] on the CPU; float32 logits [n - first_logit, V] on the GPU."""
        logits = torch.empty(tokens.shape[0] - first_logit, self.cfg.vocab_size, device=self.device)
        stream = torch.cuda.current_stream(self.device).cuda_stream
        self.handle.forward(tokens.cpu(), positions.cpu(), rows.cpu(), self.cache.k, self.cache.v, logits,
                            first_logit, stream)
        return logits


def make_engine(cfg: ModelConfig, weights: ModelWeights, dtype: str, max_seq_len: int, threads: int) -> Engine:
    """The engine for weights on their device: the compiled CPU engine, the CUDA engine for
    bfloat16 on a GPU, else the Python-sequenced reference forward (float32 on CUDA)."""
    if weights.embed.device.type == "cpu":
        return CpuEngine(cfg, weights, dtype, max_seq_len, threads)
    if dtype == "bfloat16" and hasattr(C, "CudaEngine"):
        return CudaEngine(cfg, weights, max_seq_len)
    from pyruntime.reference import TorchReference

    return TorchReference(cfg, weights, max_seq_len, PRECISIONS[dtype].kv)
