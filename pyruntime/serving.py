"""Continuous batching over one LLM's engine: requests join the running batch between steps
and leave when they finish. The KV cache is a pool of `max_batch` slots (cache rows, each
holding one sequence up to max_seq_len); a request takes a free slot for its whole life and
gives it back the moment it finishes or is cancelled. Each step of the loop prefills up to one chunk's
worth (256 tokens) of waiting prompts (their chunks in shared engine calls, each chunk's K/V
and logits bitwise what a call of its own would give), then runs one decode step for every
running sequence:
one engine call (in groups of 16 rows) that reads each weight once for all of them. A long
prompt therefore delays the others' next token by one chunk at a time, never by its whole
length. A sequence's tokens are the ones it would get alone: its prompt goes in the chunks it
would have alone, and decode steps of up to 16 rows give each row what it would get alone. A freed slot keeps its tokens' K/V: a new request whose prompt starts with them
(a chat's next turn, a shared system prompt) takes that slot and prefills only the rest.

The Scheduler runs its loop on its own thread; callers submit Requests from any thread and
receive their tokens through each Request's on_event callback (called on the scheduler's
thread: hand it to your own loop, e.g. asyncio's call_soon_threadsafe)."""

from __future__ import annotations

import collections
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from pyruntime._ext import C
from pyruntime.detokenize import TextStream
from pyruntime.engine import CpuEngine, CudaEngine
from pyruntime.generate import LLM, TokenLogprob, _Sequence
from pyruntime.sampling import Sampler, SamplingParams


@dataclass
class Event:
    """What a request got from one step: its new token (None for an error or a cancellation),
    the text it completes, its log-probabilities, and finish_reason when it was the last
    ("stop", "length", "cancelled", or "error" with `error` saying why)."""
    token_id: int | None
    text: str
    logprob: TokenLogprob | None = None
    finish_reason: str | None = None
    error: str | None = None


@dataclass(eq=False)
class Request:
    """One sequence to generate: prompt token ids, up to max_new_tokens, sampled as params
    say, ending at an EOS in `eos`, at a stop string, or at the length limit. logprobs: how
    many alternatives to report per token (None: no log-probabilities)."""
    prompt: list[int]
    max_new_tokens: int
    params: SamplingParams = field(default_factory=SamplingParams)
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None
    eos: tuple[int, ...] = ()
    on_event: Callable[[Event], None] = lambda e: None
    json_schema: dict | str | bool | None = None  # the output valid against it (LLM.generate's)
    # Set by the scheduler.
    id: int = 0
    cached_prompt_tokens: int = 0  # prompt tokens whose K/V came from the slot's earlier request
    seq: _Sequence | None = None
    slot: _Slot | None = None
    prefilled: int = 0  # prompt tokens in the cache so far
    cancelled: bool = False

    @property
    def completion_tokens(self) -> int:
        return len(self.seq.ids) if self.seq else 0

    def cancel(self) -> None:
        """Ends the request at the scheduler's next step (its slot freed; a last Event with
        finish_reason "cancelled"). Safe from any thread, and after it finished."""
        self.cancelled = True


@dataclass(eq=False)
class _Slot:
    row: int
    ids: list[int] = field(default_factory=list)  # tokens whose K/V the row holds, from position 0
    written: int = 0  # positions written since the row was last rewritten from position 0
    request: Request | None = None
    freed_at: float = 0.0


class SchedulerStopped(RuntimeError):
    pass


class Scheduler:
    """Continuous batching over llm's engine (see the module). The LLM is the scheduler's
    alone while it runs: calls of llm.generate and the like would take over its cache."""

    def __init__(self, llm: LLM, max_batch: int = 16):
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
        if not isinstance(llm.engine, (CpuEngine, CudaEngine)):
            raise ValueError(f"continuous batching needs a compiled engine, not {type(llm.engine).__name__}")
        self.llm = llm
        self.engine = llm.engine
        self.max_batch = max_batch
        self.engine.ensure_rows(max_batch)
        llm._cached_ids = []  # its row 0 is a slot now: no earlier call's K/V, no earlier stream goes on
        llm._owner = None
        self._slots = [_Slot(row) for row in range(max_batch)]
        self._waiting: list[Request] = []
        self._running: list[Request] = []  # with a slot: prefilling (prefilled < len(prompt)) or decoding
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._stopping = False
        self._error: str | None = None
        self.steps = 0  # decode steps run
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=1000)  # sequences per decode step
        # The engine runs on the scheduler's thread from now on: the OpenMP workers this thread
        # started go (with more OpenMP threads than CPUs alive, libgomp makes every barrier sleep).
        C.release_openmp_threads()
        self._thread = threading.Thread(target=self._loop, name="pyruntime-scheduler", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- public
    def submit(self, req: Request) -> Request:
        """Queues req (checked against the model's limits: ValueError). Raises SchedulerStopped
        after stop()."""
        llm = self.llm
        if not req.prompt:
            raise ValueError("prompt is empty")
        if len(req.prompt) + req.max_new_tokens > llm.max_seq_len:
            raise ValueError(f"prompt of {len(req.prompt)} tokens + max_tokens {req.max_new_tokens} exceeds the "
                             f"context length {llm.max_seq_len}")
        if req.max_new_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {req.max_new_tokens}")
        sampler = Sampler(req.params, req.prompt, llm.constraint(req.json_schema, req.eos))
        req.seq = _Sequence(list(req.prompt), sampler, TextStream(llm.tokenizer, req.stop),
                            logprobs=[] if req.logprobs is not None else None)
        with self._cond:
            if self._stopping:
                raise SchedulerStopped(self._error or "the server is shutting down")
            req.id = next(self._ids)
            self._waiting.append(req)
            self._cond.notify()
        return req

    def stop(self, reason: str = "the server is shutting down") -> None:
        """Ends every request in flight with an error Event and stops the loop."""
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._error = reason
            self._cond.notify()
        self._thread.join(timeout=60)

    @property
    def active(self) -> int:
        """Requests holding a slot."""
        with self._cond:
            return len(self._running)

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    # ----------------------------------------------------------------- the loop
    def _loop(self):
        try:
            while True:
                with self._cond:
                    while not self._stopping and not self._waiting and not self._running:
                        self._cond.wait()
                    if self._stopping:
                        break
                    self._drop_cancelled()
                    self._admit()
                    running = list(self._running)
                with self.llm._lock:
                    self._prefill(running)
                    self._decode(running)
                with self._cond:
                    self._retire()
        except Exception as e:  # a failure inside the engine: every request learns it
            self._error = f"{type(e).__name__}: {e}"
            with self._cond:
                self._stopping = True
        with self._cond:
            for req in self._waiting + self._running:
                self._finish(req, Event(None, "", finish_reason="error", error=self._error))
            self._waiting.clear()
            self._running.clear()

    def _drop_cancelled(self):
        for req in [r for r in self._waiting + self._running if r.cancelled]:
            self._finish(req, Event(None, "", finish_reason="cancelled"))
            (self._waiting if req in self._waiting else self._running).remove(req)

    def _admit(self):
        """Gives free slots to waiting requests, first come first served: each the free slot
        holding the longest prefix of its prompt still usable, else the one freed longest ago."""
        while self._waiting:
            free = [s for s in self._slots if s.request is None]
            if not free:
                return
            req = self._waiting.pop(0)
            best, reuse = None, 0
            for s in free:
                n = self.engine.reusable(s.ids, s.written, req.prompt)
                if n > reuse:
                    best, reuse = s, n
            slot = best or min(free, key=lambda s: s.freed_at)
            slot.request = req
            slot.ids = list(req.prompt[:reuse])
            req.slot = slot
            req.prefilled = req.cached_prompt_tokens = reuse
            self._running.append(req)

    def _prefill(self, running: list[Request]):
        """Prompt chunks of the requests not yet in the cache, first come first served, up to
        one chunk's worth of tokens in all (at least one chunk): each prompt in the chunks it
        would have alone (max_tokens from its first uncached token), so that its K/V and first
        token are the same; its first token sampled when its last chunk is in."""
        budget = self.engine.max_tokens
        chunks = []  # (request, first token, end)
        for req in running:
            if req.prefilled == len(req.prompt):
                continue
            c0 = req.prefilled
            c1 = min(len(req.prompt), c0 + self.engine.max_tokens)
            if c1 - c0 > budget and budget < self.engine.max_tokens:
                break
            budget -= c1 - c0
            chunks.append((req, c0, c1))
            if budget <= 0:
                break
        if not chunks:
            return
        args = [(torch.tensor(req.prompt[c0:c1]), req.slot.row, c0, c1 == len(req.prompt)) for req, c0, c1 in chunks]
        if hasattr(self.engine, "prefill_many"):  # the chunks share the reads of the weights
            logits = self.engine.prefill_many(args)
        else:
            logits = [self.engine.prefill(tokens, row, c0) for tokens, row, c0, _ in args]
        for (req, c0, c1), row_logits in zip(chunks, logits):
            req.prefilled = c1
            slot = req.slot
            slot.written = c1 if c0 == 0 else max(slot.written, c1)
            slot.ids = list(req.prompt[:c1])
            if c1 == len(req.prompt):
                self._accept(req, row_logits)

    def _decode(self, running: list[Request]):
        batch = [r for r in running if r.prefilled == len(r.prompt) and r.seq.ids and not r.seq.finish_reason]
        if not batch:
            return
        tokens = torch.tensor([r.seq.ids[-1] for r in batch])
        positions = torch.tensor([len(r.prompt) + len(r.seq.ids) - 1 for r in batch])
        rows = torch.tensor([r.slot.row for r in batch])
        logits = self.engine.decode(tokens, positions, rows)
        self.steps += 1
        self.batch_sizes.append(len(batch))
        for r, row, pos in zip(batch, logits, positions.tolist()):
            r.slot.ids.append(r.seq.ids[-1])
            r.slot.written = max(r.slot.written, pos + 1)
            self._accept(r, row)

    def _accept(self, req: Request, logits: torch.Tensor):
        s = req.seq
        try:
            self.llm._accept_one(s, logits, req.max_new_tokens, req.logprobs, req.eos)
        except Exception as e:  # this request's sampling (its constraint, its parameters): it alone ends
            s.finish_reason = "error"
            self._notify(req, Event(None, "", finish_reason="error", error=f"{type(e).__name__}: {e}"))
            return
        self._notify(req, Event(s.ids[-1], s.pending, s.logprobs[-1] if s.logprobs else None, s.finish_reason))

    @staticmethod
    def _notify(req: Request, event: Event):
        try:
            req.on_event(event)
        except Exception:  # a consumer's failure is its own: the request ends, the batch goes on
            req.cancelled = True

    def _retire(self):
        for req in [r for r in self._running if r.seq.finish_reason]:
            self._release(req)
            self._running.remove(req)

    def _release(self, req: Request):
        if req.slot is not None:
            req.slot.request = None
            req.slot.freed_at = time.monotonic()
            req.slot = None

    def _finish(self, req: Request, event: Event):
        self._release(req)
        if req.seq is not None and not req.seq.finish_reason:
            req.seq.finish_reason = event.finish_reason
        self._notify(req, event)
