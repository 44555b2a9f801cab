"""The engines an LLM runs on, one interface: prefill(tokens, row, start_pos) and
decode(tokens, positions) over a KV cache the engine owns, kv(layer) to read that cache back
in the public layout, `spec` (the model description it was built from) and weight_bytes.

- CpuEngine: the compiled CPU engine (csrc/cpu/engine.cpp, at the instruction-set level chosen
  at run time): one C++ call runs a whole forward step (embedding, every layer, final norm, LM
  head) with the weights resident in the engine.
- CudaEngine: the CUDA engine (csrc/cuda/engine.cu), bfloat16, decode steps as CUDA graphs.
- reference.TorchReference: the same forward sequenced in Python over pyruntime.ops; the
  fallback where no compiled engine exists (float32 on CUDA) and the tests' oracle.

Every engine is built from one C.ModelSpec (pyruntime.spec.build_spec); the precisions and
weight formats are pyruntime.formats'.
"""

from __future__ import annotations

import torch

from pyruntime._ext import C
from pyruntime.config import ModelConfig
from pyruntime.errors import ModelLoadError
from pyruntime.formats import FORMATS, PRECISIONS
from pyruntime.kv_cache import KVCache
from pyruntime.spec import build_spec
from pyruntime.weights import ModelWeights

# Tokens per engine call: a decode batch, or a chunk of a prompt (each weight is read once
# per chunk, so longer chunks read less but hold more activations).
MAX_TOKENS = 256


def check_supported(cfg: ModelConfig, source) -> None:
    """Raises ModelLoadError when the kernels cannot run this configuration."""
    if cfg.head_dim not in C.supported_head_dims():
        raise ModelLoadError(
            f"{source}: head_dim {cfg.head_dim} is not supported by the attention kernels "
            f"(supported: {', '.join(map(str, C.supported_head_dims()))})"
        )


class Engine:
    """What every engine shares: the KV cache it owns (KVCache, one row per sequence; grown by
    ensure_rows; layer_slots positions per layer and sequence: a ring on the CPU engine's
    sliding-window layers), prompt chunks and decode groups cut to the compiled step's limits. Subclasses
    provide _forward(tokens, positions, rows, first_logit, prompt) -> float32 logits."""

    # Decode steps run in groups of at most this many sequences: the row-wise kernels then
    # give every sequence exactly the result it would get alone.
    decode_group = C.max_row_tile_tokens

    def __init__(self, spec: C.ModelSpec, max_seq_len: int, kv_dtype: torch.dtype, device,
                 layer_slots: list[int] | None = None):
        """layer_slots: positions each layer's cache keeps per sequence (default: max_seq_len)."""
        self.spec = spec
        self.max_seq_len = max_seq_len
        self.kv_dtype = kv_dtype
        self.device = torch.device(device)
        self.layer_slots = list(layer_slots or [max_seq_len] * spec.num_layers)
        self.cache = self._new_cache(1)

    def _new_cache(self, rows: int) -> KVCache:
        s = self.spec
        return KVCache(self.layer_slots, rows, s.num_kv_heads, s.head_dim, self.kv_dtype, self.device)

    @property
    def kv_cache_bytes(self) -> int:
        """Bytes of the KV cache for one sequence (K and V of every layer's slots)."""
        s = self.spec
        return KVCache.bytes_for(self.layer_slots, 1, s.num_kv_heads, s.head_dim, self.kv_dtype)

    def reusable(self, cached: list[int], written: int, prompt: list[int]) -> int:
        """How many leading tokens of `prompt` a cache row can skip: the row holds the K/V of
        `cached` (from position 0) and positions [0, written) were written into it since it was
        last rewritten from 0. Their common prefix, less the prompt's last token (its logits are
        needed), or 0 where a sliding-window layer's ring of S slots (window W) no longer holds
        the keys the rest attends: positions [start - W + 1, start) overwritten unless
        start - W + 1 >= written - S."""
        start = 0
        for a, b in zip(cached, prompt[:-1]):
            if a != b:
                break
            start += 1
        keeps = all(s >= self.max_seq_len or max(0, start - layer.sliding_window + 1) >= written - s
                    for s, layer in zip(self.layer_slots, self.spec.layers))
        return start if keeps else 0

    def ensure_rows(self, rows: int) -> None:
        """A cache of at least `rows` sequences; growing it drops what it held."""
        if self.cache.batch < rows:
            self.cache = self._new_cache(rows)

    @property
    def weight_bytes(self) -> int:
        """Bytes of distinct weight tensors the engine holds (int8: values and scales)."""
        return self.spec.nbytes

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
            logits = self._forward(tokens[c0:c1], positions, rows[: c1 - c0], first, prompt=True)
            if logits.shape[0]:
                out.append(logits)
        logits = torch.cat(out) if len(out) > 1 else out[0]
        return logits if all_logits else logits[0]

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """One step for B sequences: tokens int64 [B] at positions int64 [B] of cache rows
        int64 [B] (distinct; default 0..B-1). Returns float32 logits [B, V]."""
        b, n = tokens.shape[0], self.decode_group
        if rows is None:
            rows = torch.arange(b)
        out = [self._forward(tokens[g0 : g0 + n], positions[g0 : g0 + n], rows[g0 : g0 + n], 0, prompt=False)
               for g0 in range(0, b, n)]
        return torch.cat(out) if len(out) > 1 else out[0]

    def kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer`'s K and V as [B, Hkv, S, D] tensors in the public layout, whatever order
        the engine keeps them in: S = layer_slots[layer], position p of row b at [b, :, p % S]
        (S = max_seq_len, so simply [b, :, p], but on a CPU engine's sliding-window layer, whose
        ring keeps the last S positions written). Copies for the CPU engine's key tiles; views
        otherwise."""
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.spec.num_layers:
            raise ValueError(f"layer must be an int in [0, {self.spec.num_layers}), got {layer!r}")
        return self.cache.layer(layer)


class CpuEngine(Engine):
    """The compiled CPU engine and its KV cache. `handle` is the C++ engine (forward over caches
    the caller passes; the tests of its argument checks use it)."""

    def __init__(self, spec: C.ModelSpec, max_seq_len: int, kv_dtype: torch.dtype, threads: int,
                 int8_activations: bool = True, prompt_bits: int = 16):
        """int8_activations: decode calls' products of q4_0, q4_1, q8_0, q4_k, q5_k, q6_k matrices in
        integers against activations quantized to 8 bits (pyruntime.formats.quantize_activations);
        False: float32. prompt_bits: the prompts' (the property)."""
        self.handle = C.Engine(spec, max_seq_len, kv_dtype, threads, MAX_TOKENS, int8_activations)
        self.prompt_bits = prompt_bits
        self.max_tokens = self.handle.max_tokens
        super().__init__(spec, max_seq_len, kv_dtype, "cpu", self.handle.layer_slots)

    @property
    def threads(self) -> int:
        return self.handle.threads

    @property
    def int8_activations(self) -> bool:
        return self.handle.int8_activations

    @property
    def prompt_bits(self) -> int:
        """The activations of a prompt's products with q4_0, q4_1, q8_0, q4_k, q5_k, q6_k matrices:
        16 (the default: int16 per group of 32, ~1.5e-5 of the group's largest value), 8 (as
        decode calls' and llama.cpp's: faster, and changes some top-1 tokens of the prompt's
        logits) or 32 (float32), where the CPU level has the integer GEMM for them
        (C.int8_prompt_products(): AVX2 and AVX512-VNNI without AMX; C.int16_prompt_products():
        AVX512-VNNI without AMX); 32 elsewhere. Setting it asks for 8, 16 or 32; this then reads
        what runs."""
        return self.handle.prompt_bits

    @prompt_bits.setter
    def prompt_bits(self, bits: int) -> None:
        if isinstance(bits, bool) or bits not in (8, 16, 32):
            raise ValueError(f"prompt_bits must be 8, 16 or 32, got {bits!r}")
        self.handle.prompt_bits = bits

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

    def _forward(self, tokens, positions, rows, first_logit, prompt, logit_tokens=None):
        logits = torch.empty(tokens.shape[0] - first_logit, self.spec.vocab)
        self.handle.forward(tokens, positions, rows, self.cache.k, self.cache.v, logits, first_logit, prompt,
                            logit_tokens)
        return logits

    @torch.inference_mode()
    def prefill_many(self, chunks: list[tuple[torch.Tensor, int, int, bool]]) -> list[torch.Tensor | None]:
        """Prompt chunks of several cache rows: (tokens int64 [T] of at most max_tokens, row,
        start_pos, whether the last token's logits are wanted), each row in at most one chunk.
        Each chunk's K/V and logits are bitwise those of prefill(tokens, row, start_pos), but
        the chunks share engine calls, and so each read of the weights: those over
        C.prompt_gemm_tokens tokens together (the GEMM), the shorter ones together (the row
        tiles), up to max_tokens tokens and decode_group logits a call (see the C++
        Engine::forward). Returns each chunk's logits [V] of its last token, or None where not
        wanted."""
        out: list[torch.Tensor | None] = [None] * len(chunks)
        if len({row for _, row, _, _ in chunks}) < len(chunks):
            raise ValueError("prefill_many: each cache row in at most one chunk")
        if any(c[0].shape[0] == 0 for c in chunks):
            raise ValueError("prefill_many: a chunk without tokens")
        for long in (True, False):
            todo = [i for i, c in enumerate(chunks) if (c[0].shape[0] > C.prompt_gemm_tokens) == long]
            while todo:
                call, n, want = [], 0, 0
                while todo and n + chunks[todo[0]][0].shape[0] <= self.max_tokens and want + chunks[todo[0]][3] <= self.decode_group:
                    i = todo.pop(0)
                    call.append(i)
                    n += chunks[i][0].shape[0]
                    want += bool(chunks[i][3])
                if not call:
                    raise ValueError(f"prefill_many: a chunk of {chunks[todo[0]][0].shape[0]} tokens "
                                     f"(at most max_tokens = {self.max_tokens})")
                tokens = torch.cat([chunks[i][0] for i in call])
                positions = torch.cat([torch.arange(chunks[i][2], chunks[i][2] + chunks[i][0].shape[0]) for i in call])
                rows = torch.cat([torch.full((chunks[i][0].shape[0],), chunks[i][1], dtype=torch.int64) for i in call])
                ends = torch.tensor([chunks[i][0].shape[0] for i in call]).cumsum(0) - 1
                picked = [j for j, i in enumerate(call) if chunks[i][3]]
                logits = self._forward(tokens, positions, rows, n - len(picked), True, ends[picked].contiguous())
                for row, j in zip(logits, picked):
                    out[call[j]] = row
        return out

    def kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = super().kv(layer)
        if self.max_seq_len % KEY_TILE:  # (every ring's slots are a multiple of it)
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

    def __init__(self, spec: C.ModelSpec, max_seq_len: int):
        self.handle = C.CudaEngine(spec, max_seq_len, MAX_TOKENS)
        self.max_tokens = self.handle.max_tokens
        super().__init__(spec, max_seq_len, torch.bfloat16, spec.embed.data.device)

    def _forward(self, tokens, positions, rows, first_logit, prompt):
        """tokens, positions, rows: int64 [n] on the CPU; float32 logits [n - first_logit, V] on the GPU
        (prompt: no difference here, every product is in bfloat16)."""
        logits = torch.empty(tokens.shape[0] - first_logit, self.spec.vocab, device=self.device)
        stream = torch.cuda.current_stream(self.device).cuda_stream
        self.handle.forward(tokens.cpu(), positions.cpu(), rows.cpu(), self.cache.k, self.cache.v, logits,
                            first_logit, stream)
        return logits


def make_engine(cfg: ModelConfig, weights: ModelWeights, dtype: str, max_seq_len: int, threads: int,
                kv_dtype: torch.dtype | None = None, int8_activations: bool = True, prompt_bits: int = 16) -> Engine:
    """The model description of `weights` at precision `dtype`, and the engine for it on the
    weights' device: the compiled CPU engine, the CUDA engine for bfloat16 on a GPU, else the
    Python-sequenced reference forward (float32 on CUDA). kv_dtype: the precision's by default;
    int8_activations, prompt_bits: CpuEngine's."""
    prec = PRECISIONS[dtype]
    kv = prec.kv if kv_dtype is None else kv_dtype
    if weights.embed.device.type == "cpu":
        return CpuEngine(build_spec(cfg, weights, prec.weights, max_seq_len), max_seq_len, kv, threads,
                         int8_activations, prompt_bits)
    if dtype == "bfloat16" and kv == torch.bfloat16 and hasattr(C, "CudaEngine"):
        return CudaEngine(build_spec(cfg, weights, prec.weights, max_seq_len, torch.bfloat16, fuse=True), max_seq_len)
    from pyruntime.reference import TorchReference

    return TorchReference(build_spec(cfg, weights, FORMATS["float32"], max_seq_len, prec.load), max_seq_len, kv)
