"""`LLM`: load a model, then generate, stream, chat, score. Prefill of the whole prompt in one
pass, then one decode step per token against a preallocated KV cache; a prompt that
starts with the previous call's tokens reuses their cached K/V."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from pyruntime import _ext, models
from pyruntime.config import ModelConfig
from pyruntime.detokenize import TextStream
from pyruntime.engine import PRECISIONS
from pyruntime.errors import ModelLoadError
from pyruntime.kv_cache import KVCache
from pyruntime.model import Transformer, check_supported
from pyruntime.sampling import Sampler, SamplingParams
from pyruntime.tokenizer import Tokenizer
from pyruntime.weights import load_weights

DEFAULT_MAX_SEQ_LEN = 4096


@dataclass
class Stats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0  # prompt tokens whose K/V were reused from the previous call
    ttft_s: float = 0.0  # time to first token
    decode_tokens_per_s: float = 0.0
    total_s: float = 0.0
    decode_step_s: list[float] = field(default_factory=list)  # wall time of each decode step


@dataclass
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top_logprobs: list[tuple[int, str, float]]  # the N most likely: (id, text, logprob)


@dataclass
class Completion:
    text: str
    token_ids: list[int]  # generated tokens, the EOS that ended generation included
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    stats: Stats = field(default_factory=Stats)
    logprobs: list[TokenLogprob] | None = None


@dataclass
class _Sequence:
    prompt: list[int]
    sampler: Sampler
    text: TextStream
    ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None
    pending: str = ""  # text handed out by the latest step


def _physical_cores() -> int:
    try:
        cores = set()
        phys = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("physical id"):
                phys = line.split(":")[1].strip()
            elif line.startswith("core id"):
                core = line.split(":")[1].strip()
                cores.add((phys, core))
        if cores:
            return len(cores)
    except OSError:
        pass
    return max(1, torch.get_num_threads())


class LLM:
    def __init__(self, model: str | Path, dtype: str = "float32", max_seq_len: int | None = None,
                 threads: int | None = None, device: str = "cpu", progress: bool = True):
        if dtype not in PRECISIONS:
            raise ValueError(f"dtype must be one of {', '.join(PRECISIONS)}, got {dtype!r}")
        if dtype == "int8" and device != "cpu":
            raise ValueError("dtype='int8' runs on the CPU engine only; use device='cpu'")
        if device != "cpu":
            if device != "cuda":
                raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
            if not (torch.cuda.is_available() and _ext.C.with_cuda):
                raise ValueError("device='cuda' needs a CUDA GPU and a CUDA build of pyruntime")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        if max_seq_len is not None and (isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 2):
            raise ValueError(f"max_seq_len must be an int >= 2 or None, got {max_seq_len!r}")
        self.threads = threads or _physical_cores()
        torch.set_num_threads(self.threads)
        _ext.C.set_cpu_num_threads(self.threads)

        self.path = models.resolve(model, progress=progress)
        self.config = ModelConfig.from_file(self.path / "config.json")
        check_supported(self.config, self.path / "config.json")
        self.tokenizer = Tokenizer(self.path)
        self.eos_token_ids = self._eos_ids()
        self.dtype = dtype
        self.device = device
        limit = self.config.max_position_embeddings
        self.max_seq_len = max_seq_len or min(limit, DEFAULT_MAX_SEQ_LEN)
        if self.max_seq_len > limit:
            raise ValueError(f"max_seq_len {self.max_seq_len} exceeds the model's max_position_embeddings {limit}")
        if self.config.sliding_window and self.max_seq_len > self.config.sliding_window:
            raise ValueError(
                f"max_seq_len {self.max_seq_len} exceeds the model's sliding_window {self.config.sliding_window}, "
                "which this runtime does not implement; pass max_seq_len <= sliding_window"
            )
        weights = load_weights(self.path, self.config, PRECISIONS[dtype].load, progress=progress)
        if device == "cuda":
            weights = _to_device(weights, device)
        self.model = Transformer(self.config, weights, self.max_seq_len, dtype, self.threads)
        del weights  # int8: the float32 copy goes; the engine keeps the quantised one
        self._lock = threading.Lock()
        self._cache = self._new_cache(1)
        self._cached_ids: list[int] = []  # tokens whose K/V are in row 0 of the cache

    # ----------------------------------------------------------------- public API
    @property
    def kv_cache_bytes(self) -> int:
        """Bytes of the KV cache for one sequence: 2 x layers x Hkv x D x max_seq_len x bytes."""
        c = self.config
        return KVCache.bytes_for(c.num_layers, 1, c.num_kv_heads, self.max_seq_len, c.head_dim, self.kv_dtype)

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights the model reads per token (int8: values and scales)."""
        return self.model.weight_bytes

    @property
    def kv_dtype(self) -> torch.dtype:
        return PRECISIONS[self.dtype].kv

    def generate(self, prompt, max_new_tokens: int = 256, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0, seed: int | None = None,
                 stop: str | list[str] | None = None, logprobs: int | None = None, ignore_eos: bool = False):
        """prompt: a string, a list of token ids, or a list of those (generated as one batch,
        returning a list). Returns a Completion per prompt. ignore_eos=True generates
        max_new_tokens whatever the model says (for benchmarks)."""
        batch = _is_batch(prompt)
        prompts = [self._prompt_ids(p) for p in (prompt if batch else [prompt])]
        args = self._check_args(prompts, max_new_tokens, stop, logprobs,
                                SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty, seed), ignore_eos)
        with self._lock:
            seqs, stats = None, None
            for seqs, stats in self._run(prompts, *args):
                pass
        out = [self._completion(s, st) for s, st in zip(seqs, stats)]
        return out if batch else out[0]

    def stream(self, prompt, max_new_tokens: int = 256, temperature: float = 0.0, top_k: int = 0,
               top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0, seed: int | None = None,
               stop: str | list[str] | None = None, ignore_eos: bool = False) -> Iterator[str]:
        """Yields text pieces as tokens are produced; they join to generate(...).text."""
        if _is_batch(prompt):
            raise ValueError("stream() takes one prompt (a string or a list of token ids)")
        prompts = [self._prompt_ids(prompt)]
        args = self._check_args(prompts, max_new_tokens, stop, None,
                                SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty, seed), ignore_eos)
        return self._stream(prompts, args)

    def _stream(self, prompts, args):
        with self._lock:
            for seqs, _ in self._run(prompts, *args):
                piece = seqs[0].pending
                if piece:
                    yield piece

    def chat(self, messages: list[dict], **kwargs) -> Completion:
        """Renders the chat template (add_generation_prompt=True) and generates."""
        return self.generate(self.render_chat(messages), **kwargs)

    def render_chat(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def logits(self, token_ids) -> torch.Tensor:
        """float32 [len(token_ids), vocab] from one forward pass over the tokens."""
        ids = self._prompt_ids(token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids))
        if len(ids) > self.max_seq_len:
            raise ValueError(f"{len(ids)} tokens exceed max_seq_len {self.max_seq_len}")
        with self._lock:
            self._cached_ids = []
            out = self.model.prefill(torch.tensor(ids), self._cache, 0, 0, all_logits=True)
            self._cached_ids = list(ids)
        return out

    # ----------------------------------------------------------------- internals
    def _eos_ids(self) -> tuple[int, ...]:
        ids = set(self.config.eos_token_ids)
        gen = self.path / "generation_config.json"
        if gen.exists():
            try:
                eos = json.loads(gen.read_text()).get("eos_token_id")
            except (OSError, ValueError, AttributeError) as e:
                raise ModelLoadError(f"{gen}: not a readable JSON object ({e})") from None
            ids.update(eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else [])
        tok_eos = self.tokenizer.token_id(self.tokenizer.eos_token)
        if tok_eos is not None:
            ids.add(tok_eos)
        return tuple(sorted(ids))

    def _new_cache(self, rows: int) -> KVCache:
        c = self.config
        return KVCache(c.num_layers, rows, c.num_kv_heads, self.max_seq_len, c.head_dim, self.kv_dtype, self.device)

    def _prompt_ids(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        elif isinstance(prompt, (list, tuple)):
            ids = list(prompt)
            vocab = self.config.vocab_size
            for t in ids:
                if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab:
                    raise ValueError(f"prompt token ids must be ints in [0, {vocab}), got {t!r}")
        else:
            raise ValueError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
        if not ids:
            raise ValueError("prompt is empty")
        return ids

    def _check_args(self, prompts, max_new_tokens, stop, logprobs, params, ignore_eos):
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        for p in prompts:
            if len(p) + max_new_tokens > self.max_seq_len:
                raise ValueError(
                    f"prompt of {len(p)} tokens + max_new_tokens {max_new_tokens} exceeds max_seq_len {self.max_seq_len}"
                )
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if not all(isinstance(s, str) and s for s in stops):
            raise ValueError(f"stop must be a non-empty string or a list of them, got {stop!r}")
        if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int) or not 0 <= logprobs <= 20):
            raise ValueError(f"logprobs must be an int in [0, 20] or None, got {logprobs!r}")
        if not isinstance(ignore_eos, bool):
            raise ValueError(f"ignore_eos must be a bool, got {ignore_eos!r}")
        eos = () if ignore_eos else self.eos_token_ids
        return max_new_tokens, stops, logprobs, params, eos

    def _run(self, prompts, max_new_tokens, stops, logprobs, params, eos):
        """Generates for every prompt; yields (sequences, stats) after each step."""
        t_start = time.perf_counter()
        b = len(prompts)
        seqs = [_Sequence(p, Sampler(params, p), TextStream(self.tokenizer, stops),
                          logprobs=[] if logprobs is not None else None) for p in prompts]
        stats = [Stats(prompt_tokens=len(p)) for p in prompts]
        if max_new_tokens == 0:
            for s in seqs:
                s.finish_reason = "length"
            yield seqs, stats
            return
        reuse = 0
        if b == 1:
            reuse = _common_prefix(self._cached_ids, prompts[0])
            reuse = min(reuse, len(prompts[0]) - 1)
        if self._cache.batch < b:
            self._cache = self._new_cache(b)
        self._cached_ids = []  # the cache is being rewritten; valid again only on success
        try:
            logits = []
            for row, p in enumerate(prompts):
                start = reuse if row == 0 else 0
                logits.append(self.model.prefill(torch.tensor(p[start:]), self._cache, row, start))
            stats[0].cached_prompt_tokens = reuse
            t_first = time.perf_counter()
            self._accept(seqs, torch.stack(logits), max_new_tokens, logprobs, eos)
            for st in stats:
                st.ttft_s = t_first - t_start
            yield seqs, stats
            while not all(s.finish_reason for s in seqs):
                tokens = torch.tensor([s.ids[-1] for s in seqs])
                # A finished sequence re-feeds its last token at the same slot; nobody reads it.
                positions = torch.tensor([len(s.prompt) + len(s.ids) - 1 for s in seqs])
                t_step = time.perf_counter()
                self._accept(seqs, self.model.decode(tokens, positions, self._cache), max_new_tokens, logprobs, eos)
                step_s = time.perf_counter() - t_step
                for st in stats:
                    st.decode_step_s.append(step_s)
                yield seqs, stats
            t_end = time.perf_counter()
            for s, st in zip(seqs, stats):
                st.completion_tokens = len(s.ids)
                st.total_s = t_end - t_start
                decode_s = t_end - t_first
                st.decode_tokens_per_s = (len(s.ids) - 1) / decode_s if len(s.ids) > 1 and decode_s > 0 else 0.0
            if b == 1:
                s = seqs[0]
                self._cached_ids = s.prompt + s.ids[:-1]
        except BaseException:
            self._cached_ids = []
            raise

    def _accept(self, seqs, logits, max_new_tokens, logprobs, eos):
        """Samples the next token of every unfinished sequence from its logits row."""
        for s, row in zip(seqs, logits):
            s.pending = ""
            if s.finish_reason:
                continue
            token = s.sampler(row)
            s.ids.append(token)
            if logprobs is not None:
                s.logprobs.append(self._logprob(row, token, logprobs))
            if token in eos:
                s.finish_reason = "stop"
            else:
                s.pending = s.text.push(token)
                if s.text.stopped:
                    s.finish_reason = "stop"
                elif len(s.ids) >= max_new_tokens:
                    s.finish_reason = "length"
            if s.finish_reason:
                s.pending += s.text.finish()

    def _logprob(self, logits, token, n) -> TokenLogprob:
        lp = torch.log_softmax(logits.float(), dim=-1)
        top = torch.topk(lp, n) if n else None
        decode = self.tokenizer.decode
        return TokenLogprob(
            token_id=token,
            token=decode([token]),
            logprob=float(lp[token]),
            top_logprobs=[(int(i), decode([int(i)]), float(v)) for v, i in zip(top.values, top.indices)] if n else [],
        )

    def _completion(self, s: _Sequence, st: Stats) -> Completion:
        return Completion(text=s.text.text, token_ids=list(s.ids), finish_reason=s.finish_reason or "length",
                          stats=st, logprobs=s.logprobs)


def _is_batch(prompt) -> bool:
    return isinstance(prompt, (list, tuple)) and len(prompt) > 0 and all(isinstance(p, (str, list, tuple)) for p in prompt)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _to_device(weights, device):
    import dataclasses

    def move(t):
        return None if t is None else t.to(device)

    layers = [dataclasses.replace(l, **{k: move(v) for k, v in vars(l).items()}) for l in weights.layers]
    embed = weights.embed.to(device)
    lm_head = embed if weights.lm_head is weights.embed else weights.lm_head.to(device)
    return dataclasses.replace(weights, embed=embed, layers=layers, final_norm=weights.final_norm.to(device), lm_head=lm_head)
