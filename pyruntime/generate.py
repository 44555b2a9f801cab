"""`LLM`: load a model, then generate, stream, chat, score. Prefill of the whole prompt in one
pass, then one decode step per token against a preallocated KV cache; a prompt that
starts with the tokens the previous call left in the cache reuses their K/V."""

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
from pyruntime.engine import Engine, check_supported, make_engine
from pyruntime.formats import PRECISIONS
from pyruntime.errors import ModelLoadError
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


@dataclass
class _Run:
    """One call in progress: its sequences, advanced a step at a time by LLM._step."""
    seqs: list[_Sequence]
    stats: list[Stats]
    max_new_tokens: int
    logprobs: int | None
    eos: tuple[int, ...]
    t_start: float
    t_first: float = 0.0
    started: bool = False  # prefilled: from then on it needs to own the cache

    @property
    def done(self) -> bool:
        return all(s.finish_reason for s in self.seqs)


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
    """One model and one KV cache, shared by every call on this object, from any thread.

    Who may touch the cache: the call that last started using it (generate; logits; a stream
    from its first next()) owns it. `_lock` is held while a step computes and never across a
    stream's yield, so a suspended stream blocks nobody: a later call takes the cache, and the
    stream's next step raises RuntimeError ("superseded") instead of running on K/V it no
    longer owns. Which K/V may be reused: `_cached_ids` lists exactly the tokens whose K/V in
    row 0 are completely written; a step cuts it below the first position it writes before
    writing and extends it only once the write has returned, so a call cancelled or
    interrupted anywhere leaves only valid K/V to reuse. A scheduler serving many requests
    keeps both rules per cache row: one owner at a time, cut before write, extend after.

    llm.engine is the engine the model runs on (pyruntime.engine: CpuEngine, CudaEngine, or the
    Python-sequenced TorchReference): it owns the KV cache, and llm.engine.kv(layer) returns a
    layer's K and V as [B, Hkv, S, D] tensors."""

    def __init__(self, model: str | Path, dtype: str | None = None, max_seq_len: int | None = None,
                 threads: int | None = None, device: str = "cpu", progress: bool = True,
                 kv_dtype: str | None = None, int8_activations: bool = True, prompt_bits: int = 16):
        """dtype: "gguf" (a GGUF model's own weight types, read from the file's memory map; the
        default for GGUF files and bundled models), "float32" (the default for folders),
        "bfloat16", "int8" or "int4" (quantized once at load). kv_dtype: "float32" or
        "bfloat16" for the KV cache (default: the precision's, pyruntime.formats.PRECISIONS).
        int8_activations: the CPU engine's decode steps multiply Q4_0, Q4_1, Q8_0, Q4_K, Q5_K and Q6_K
        matrices in integers against activations quantized to 8 bits (as llama.cpp); False keeps
        them float32. prompt_bits: the prompts' activations in those products where the CPU has
        the integer GEMM for them: 16 (int16, the default; AVX512-VNNI without AMX), 8 (as
        llama.cpp; AVX2 too) or 32 (float32); float32 elsewhere (llm.engine.prompt_bits says
        which runs)."""
        if isinstance(prompt_bits, bool) or prompt_bits not in (8, 16, 32):
            raise ValueError(f"prompt_bits must be 8, 16 or 32, got {prompt_bits!r}")
        if dtype is not None and dtype not in PRECISIONS:
            raise ValueError(f"dtype must be one of {', '.join(PRECISIONS)} or None, got {dtype!r}")
        if kv_dtype not in (None, "float32", "bfloat16"):
            raise ValueError(f"kv_dtype must be 'float32', 'bfloat16' or None, got {kv_dtype!r}")
        if dtype in ("int8", "int4", "gguf") and device != "cpu":
            raise ValueError(f"dtype={dtype!r} runs on the CPU engine only; use device='cpu'")
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
        gguf_file = models.gguf_weights(self.path)
        if dtype is None:
            dtype = "gguf" if gguf_file and device == "cpu" else "float32"
        if dtype == "gguf" and gguf_file is None:
            raise ValueError(f"dtype='gguf' keeps a GGUF file's weight types; {self.path} holds safetensors")
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
        prec = PRECISIONS[dtype]
        self._kv_dtype = prec.kv if kv_dtype is None else getattr(torch, kv_dtype)
        weights = load_weights(self.path, self.config, None if prec.native else prec.load, progress=progress)
        if device == "cuda":
            weights = _to_device(weights, device)
        self.engine: Engine = make_engine(self.config, weights, dtype, self.max_seq_len, self.threads, self._kv_dtype,
                                          int8_activations, prompt_bits)
        del weights  # int8 / int4: the float32 copy goes; the engine keeps the quantised one
        self._lock = threading.Lock()  # held during a step's compute only
        self._cached_ids: list[int] = []  # tokens whose K/V are completely written in row 0 of the cache
        # Positions of row 0 possibly written since it was last rewritten from position 0 (raised
        # before each write, so an interrupted call leaves it right): a sliding-window ring may
        # have overwritten the keys of earlier positions (Engine.keeps).
        self._written = 0
        self._owner: _Run | None = None  # the run that last took the cache; None after logits()

    # ----------------------------------------------------------------- public API
    @property
    def kv_cache_bytes(self) -> int:
        """Bytes of the KV cache for one sequence: 2 x Hkv x D x bytes x the positions each layer
        keeps (max_seq_len; fewer on sliding-window layers, llm.engine.layer_slots)."""
        return self.engine.kv_cache_bytes

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights the model reads per token (int8: values and scales)."""
        return self.engine.weight_bytes

    @property
    def kv_dtype(self) -> torch.dtype:
        return self._kv_dtype

    @property
    def weight_formats(self) -> dict[str, int]:
        """Matrices per weight format: how the engine holds this model's weights."""
        counts: dict[str, int] = {}
        s = self.engine.spec
        for m in [s.embed, s.lm_head] + [getattr(l, r) for l in s.layers for r in ("q", "k", "v", "o", "gate", "up", "down")]:
            counts[m.format.name] = counts.get(m.format.name, 0) + 1
        return counts

    def generate(self, prompt, max_new_tokens: int = 256, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0, seed: int | None = None,
                 stop: str | list[str] | None = None, logprobs: int | None = None, ignore_eos: bool = False,
                 json_schema: dict | str | bool | None = None):
        """prompt: a string, a list of token ids, or a list of those (generated as one batch,
        returning a list). Returns a Completion per prompt. ignore_eos=True generates
        max_new_tokens whatever the model says (for benchmarks). json_schema: the output is a
        JSON document valid against this schema (True: any JSON object), unless max_new_tokens
        cuts it short (finish_reason "length")."""
        batch = _is_batch(prompt)
        prompts = [self._prompt_ids(p) for p in (prompt if batch else [prompt])]
        args = self._check_args(prompts, max_new_tokens, stop, logprobs,
                                SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty, seed), ignore_eos)
        run = self._new_run(prompts, *args, json_schema=json_schema)
        with self._lock:  # the whole call: no other call can supersede it halfway
            while not run.done:
                self._step(run)
        out = [self._completion(s, st) for s, st in zip(run.seqs, run.stats)]
        return out if batch else out[0]

    def stream(self, prompt, max_new_tokens: int = 256, temperature: float = 0.0, top_k: int = 0,
               top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0, seed: int | None = None,
               stop: str | list[str] | None = None, ignore_eos: bool = False,
               json_schema: dict | str | bool | None = None) -> Iterator[str]:
        """Yields text pieces as tokens are produced; they join to generate(...).text.

        The stream takes the LLM at its first next() and holds no lock between pieces. A call
        on this LLM started before the stream ends (from any thread, including a second stream's
        first next()) cancels it: its next next() raises RuntimeError."""
        if _is_batch(prompt):
            raise ValueError("stream() takes one prompt (a string or a list of token ids)")
        prompts = [self._prompt_ids(prompt)]
        args = self._check_args(prompts, max_new_tokens, stop, None,
                                SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty, seed), ignore_eos)
        return self._stream(self._new_run(prompts, *args, json_schema=json_schema))

    def _stream(self, run: _Run):
        while not run.done:
            with self._lock:
                self._step(run)
            piece = run.seqs[0].pending
            if piece:
                yield piece

    def chat(self, messages: list[dict], *, chat_template: str | None = None, tools: list[dict] | None = None,
             documents: list[dict] | None = None, chat_template_kwargs: dict | None = None, **kwargs) -> Completion:
        """Renders the chat template (add_generation_prompt=True) and generates from its token ids,
        encoded as transformers' apply_chat_template does (no special tokens added: the template
        writes BOS itself). chat_template: a template name (e.g. "tool_use") or a template string;
        chat_template_kwargs: more variables for the template (e.g. {"enable_thinking": False},
        or {"continue_final_message": True}); other keyword arguments go to generate()."""
        ids = self.tokenizer.apply_chat_template(messages, chat_template=chat_template, tools=tools,
                                                 documents=documents, tokenize=True, **(chat_template_kwargs or {}))
        return self.generate(ids, **kwargs)

    def render_chat(self, messages: list[dict], **template_kwargs) -> str:
        """The rendered conversation as text; template_kwargs as Tokenizer.apply_chat_template's."""
        return self.tokenizer.apply_chat_template(messages, **template_kwargs)

    def logits(self, token_ids) -> torch.Tensor:
        """float32 [len(token_ids), vocab] from one forward pass over the tokens."""
        ids = self._prompt_ids(token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids))
        if len(ids) > self.max_seq_len:
            raise ValueError(f"{len(ids)} tokens exceed max_seq_len {self.max_seq_len}")
        with self._lock:
            self._owner = None
            self._cached_ids = []
            self._written = len(ids)
            out = self.engine.prefill(torch.tensor(ids), 0, 0, all_logits=True)
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

    def constraint(self, json_schema, eos: tuple[int, ...]):
        """The sampling constraint of one sequence for json_schema (None: none)."""
        if json_schema is None or json_schema is False:
            return None
        from pyruntime.grammar import JsonSchemaConstraint

        return JsonSchemaConstraint(self.tokenizer, json_schema, max(self.config.vocab_size, self.tokenizer.vocab_size),
                                    eos)

    def _new_run(self, prompts, max_new_tokens, stops, logprobs, params, eos, json_schema=None) -> _Run:
        seqs = [_Sequence(p, Sampler(params, p, self.constraint(json_schema, eos)), TextStream(self.tokenizer, stops),
                          logprobs=[] if logprobs is not None else None) for p in prompts]
        run = _Run(seqs, [Stats(prompt_tokens=len(p)) for p in prompts], max_new_tokens, logprobs, eos,
                   time.perf_counter())
        if max_new_tokens == 0:  # done without touching the model or the cache
            for s in seqs:
                s.finish_reason = "length"
        return run

    def _step(self, run: _Run):
        """Advances an unfinished run by one step, under self._lock: its prefill first (taking
        the cache from whichever call had it), then one decode step per call."""
        if not run.started:
            self._owner = run
            self._prefill(run)
        elif self._owner is not run:
            raise RuntimeError("this stream was superseded by a later call on the same LLM, which took over "
                               "its KV cache; the stream is cancelled (finish or close a stream before "
                               "starting another call to keep its output)")
        else:
            self._decode(run)
        if run.done:
            t_end = time.perf_counter()
            for s, st in zip(run.seqs, run.stats):
                st.completion_tokens = len(s.ids)
                st.total_s = t_end - run.t_start
                decode_s = t_end - run.t_first
                st.decode_tokens_per_s = (len(s.ids) - 1) / decode_s if len(s.ids) > 1 and decode_s > 0 else 0.0

    def _prefill(self, run: _Run):
        prompts = [s.prompt for s in run.seqs]
        b = len(prompts)
        reuse = 0
        if b == 1:
            reuse = self.engine.reusable(self._cached_ids, self._written, prompts[0])
        # Row 0 is rewritten from `reuse` on (a batch rewrites it all and leaves nothing reusable).
        self._cached_ids = prompts[0][:reuse]
        run.started = True
        self.engine.ensure_rows(b)
        logits = []
        for row, p in enumerate(prompts):
            start = reuse if row == 0 else 0
            if row == 0:
                self._written = len(p) if start == 0 else max(self._written, len(p))
            logits.append(self.engine.prefill(torch.tensor(p[start:]), row, start))
        if b == 1:
            self._cached_ids = list(prompts[0])
        run.stats[0].cached_prompt_tokens = reuse
        run.t_first = time.perf_counter()
        self._accept(run, torch.stack(logits))
        for st in run.stats:
            st.ttft_s = run.t_first - run.t_start

    def _decode(self, run: _Run):
        seqs = run.seqs
        tokens = torch.tensor([s.ids[-1] for s in seqs])
        # A finished sequence re-feeds its last token at the same slot; nobody reads it.
        # For one sequence the slot is len(self._cached_ids): nothing valid is overwritten.
        positions = torch.tensor([len(s.prompt) + len(s.ids) - 1 for s in seqs])
        self._written = max(self._written, int(positions[0]) + 1)
        t_step = time.perf_counter()
        logits = self.engine.decode(tokens, positions)
        if len(seqs) == 1:
            self._cached_ids = seqs[0].prompt + seqs[0].ids
        self._accept(run, logits)
        step_s = time.perf_counter() - t_step
        for st in run.stats:
            st.decode_step_s.append(step_s)

    def _accept(self, run: _Run, logits):
        """Samples the next token of every unfinished sequence from its logits row."""
        for s, row in zip(run.seqs, logits):
            self._accept_one(s, row, run.max_new_tokens, run.logprobs, run.eos)

    def _accept_one(self, s: _Sequence, row: torch.Tensor, max_new_tokens: int, logprobs: int | None,
                    eos: tuple[int, ...]) -> None:
        """Samples s's next token from its logits row (unless s is finished): its text in
        s.pending, its log-probabilities (logprobs: how many alternatives; None: none), and
        s.finish_reason once it is an EOS, completes a stop string or reaches max_new_tokens."""
        s.pending = ""
        if s.finish_reason:
            return
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


def _to_device(weights, device):
    import dataclasses

    def move(t):
        return None if t is None else t.to(device)

    layers = [dataclasses.replace(l, **{k: move(v) for k, v in vars(l).items()}) for l in weights.layers]
    embed = weights.embed.to(device)
    lm_head = embed if weights.lm_head is weights.embed else weights.lm_head.to(device)
    return dataclasses.replace(weights, embed=embed, layers=layers, final_norm=weights.final_norm.to(device), lm_head=lm_head)
