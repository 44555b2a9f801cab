"""`pyruntime serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn, server-sent events
through sse-starlette) over the continuous-batching Scheduler (pyruntime/serving.py).

Endpoints: POST /v1/chat/completions, POST /v1/completions (streamed or not), GET /v1/models,
GET /health. Errors come as OpenAI's error JSON: 400 for a malformed or out-of-range request
(a prompt longer than the context included), 401 without the API key when one is set, 503
once the server is shutting down (requests in flight end with an error, not a hang)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import time
import uuid
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse

from pyruntime.generate import LLM
from pyruntime.sampling import SamplingParams
from pyruntime.serving import Event, Request, Scheduler, SchedulerStopped


class APIError(Exception):
    """An OpenAI-style error: HTTP status, message, type, the offending parameter."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, content=_error_body(self.message, self.type, self.param, self.code))


def _error_body(message, type_="invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # fields of the API that change nothing here
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    response_format: dict[str, Any] | None = None
    ignore_eos: bool = False  # an extension (as vLLM's): generate max_tokens whatever the model says


class ChatBody(_Body):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None


class CompletionBody(_Body):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None


class OpenAIServer:
    """The app's state: the model, its scheduler, the model name it answers to."""

    def __init__(self, llm: LLM, model_name: str, max_batch: int = 16, api_key: str | None = None):
        self.llm = llm
        self.model_name = model_name
        self.api_key = api_key
        self.scheduler = Scheduler(llm, max_batch)
        self.created = int(time.time())

    # ----------------------------------------------------------------- requests
    def _check_common(self, body: _Body) -> list[str]:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(body, name):
                raise APIError(400, f"{name} is not supported (only 0)", param=name)
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > 4 or not all(stops):
            raise APIError(400, "stop must be a non-empty string or up to 4 of them", param="stop")
        return stops

    @staticmethod
    def json_schema(body: _Body):
        """response_format as a constraint: None (text), True (json_object) or the schema."""
        fmt = body.response_format or {"type": "text"}
        kind = fmt.get("type")
        if kind == "text":
            return None
        if kind == "json_object":
            return True
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
                raise APIError(400, "response_format.json_schema must be {\"name\": ..., \"schema\": {...}}",
                               param="response_format")
            return spec.get("schema", {})
        raise APIError(400, f"response_format type must be text, json_object or json_schema, got {kind!r}",
                       param="response_format")

    def _requests(self, prompt: list[int], body: _Body, max_tokens: int | None, logprobs: int | None,
                  stops: list[str], on_event) -> list[Request]:
        llm = self.llm
        if len(prompt) >= llm.max_seq_len:
            raise APIError(400, f"the prompt has {len(prompt)} tokens; the context length is {llm.max_seq_len}",
                           param="messages" if isinstance(body, ChatBody) else "prompt",
                           code="context_length_exceeded")
        room = llm.max_seq_len - len(prompt)
        if max_tokens is None:
            max_tokens = room
        elif max_tokens > room:
            raise APIError(400, f"the prompt ({len(prompt)} tokens) plus max_tokens ({max_tokens}) exceeds the "
                                f"context length {llm.max_seq_len}", param="max_tokens", code="context_length_exceeded")
        reqs = []
        schema = self.json_schema(body)
        for i in range(body.n):
            seed = None if body.seed is None else body.seed + i
            try:
                params = SamplingParams(temperature=body.temperature, top_p=body.top_p, seed=seed)
            except ValueError as e:
                raise APIError(400, str(e)) from None
            reqs.append(Request(prompt, max_tokens, params, stops, logprobs, () if body.ignore_eos else llm.eos_token_ids,
                                on_event=lambda e, i=i: on_event(i, e), json_schema=schema))
        return reqs

    def chat_prompt(self, body: ChatBody) -> list[int]:
        messages = []
        for i, m in enumerate(body.messages):
            content = m.get("content")
            if isinstance(content, list):  # content parts: the text ones, joined
                if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                    raise APIError(400, f"messages[{i}].content: only text parts are supported", param="messages")
                content = "".join(p.get("text", "") for p in content)
            if not isinstance(m.get("role"), str):
                raise APIError(400, f"messages[{i}] needs a role", param="messages")
            messages.append({**m, "content": content})
        try:
            return self.llm.tokenizer.apply_chat_template(messages, tools=body.tools, tokenize=True)
        except ValueError as e:
            raise APIError(400, f"the chat template failed: {e}", param="messages") from None

    def completion_prompts(self, body: CompletionBody) -> list[list[int]]:
        if body.echo or body.suffix:
            raise APIError(400, "echo and suffix are not supported", param="echo" if body.echo else "suffix")
        p = body.prompt
        prompts = [p] if isinstance(p, str) or (p and isinstance(p[0], int)) else list(p)
        if not prompts:
            raise APIError(400, "prompt is empty", param="prompt")
        out = []
        vocab = self.llm.config.vocab_size
        for x in prompts:
            ids = self.llm.tokenizer.encode(x) if isinstance(x, str) else list(x)
            if not ids:
                raise APIError(400, "prompt is empty", param="prompt")
            if not all(0 <= t < vocab for t in ids):
                raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
            out.append(ids)
        return out

    async def run(self, http: HTTPRequest, prompts: list[list[int]], body: _Body, kind: Literal["chat", "text"]):
        """Submits n requests per prompt and answers: a JSON body, or an event stream."""
        stops = self._check_common(body)
        if kind == "chat":
            max_tokens = body.max_completion_tokens or body.max_tokens
            if body.top_logprobs is not None and not body.logprobs:
                raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
            logprobs = (body.top_logprobs or 0) if body.logprobs else None
        else:
            max_tokens, logprobs = body.max_tokens, body.logprobs
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        reqs: list[Request] = []
        for p_index, prompt in enumerate(prompts):
            def on_event(i, e, base=p_index * body.n):
                loop.call_soon_threadsafe(queue.put_nowait, (base + i, e))
            reqs += self._requests(prompt, body, max_tokens, logprobs, stops, on_event)
        try:
            for r in reqs:
                self.scheduler.submit(r)
        except SchedulerStopped as e:
            for r in reqs:
                r.cancel()
            raise APIError(503, str(e), "server_error") from None
        except ValueError as e:
            for r in reqs:
                r.cancel()
            raise APIError(400, str(e), param="response_format" if "json_schema" in str(e) else None) from None
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return EventSourceResponse(self._stream(queue, reqs, rid, created, kind, include_usage, http),
                                       ping=15, send_timeout=30)
        return await self._collect(queue, reqs, rid, created, kind, http)

    def _usage(self, reqs: list[Request]) -> dict:
        # Each prompt once, whatever n (its cached tokens: the most any of its copies found).
        prompt = sum({id(r.prompt): len(r.prompt) for r in reqs}.values())
        cached: dict[int, int] = {}
        for r in reqs:
            cached[id(r.prompt)] = max(cached.get(id(r.prompt), 0), r.cached_prompt_tokens)
        cached = sum(cached.values())
        completion = sum(r.completion_tokens for r in reqs)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached}}

    async def _collect(self, queue, reqs, rid, created, kind, http) -> dict:
        texts = [""] * len(reqs)
        lps: list[list] = [[] for _ in reqs]
        finish: list[str | None] = [None] * len(reqs)
        checked = time.monotonic()
        try:
            while not all(finish):
                if time.monotonic() - checked > 1.0:  # nobody to answer any more: free the slots
                    checked = time.monotonic()
                    if await http.is_disconnected():
                        raise APIError(400, "the client disconnected")
                try:
                    i, e = await asyncio.wait_for(queue.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    continue
                if e.finish_reason in ("error", "cancelled"):
                    raise APIError(503 if e.finish_reason == "error" else 500, e.error or "the request was cancelled",
                                   "server_error")
                texts[i] += e.text
                if e.logprob is not None:
                    lps[i].append(e.logprob)
                finish[i] = e.finish_reason
        finally:
            for r in reqs:
                r.cancel()  # no-op for the finished ones; frees the rest (a client gone)
        choices = []
        for i, r in enumerate(reqs):
            logprobs = None if r.logprobs is None else _logprobs(kind, lps[i])
            if kind == "chat":
                choices.append({"index": i, "message": {"role": "assistant", "content": texts[i]},
                                "logprobs": logprobs, "finish_reason": finish[i]})
            else:
                choices.append({"index": i, "text": texts[i], "logprobs": logprobs, "finish_reason": finish[i]})
        return {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion", "created": created,
                "model": self.model_name, "choices": choices, "usage": self._usage(reqs)}

    async def _stream(self, queue, reqs, rid, created, kind, include_usage, http):
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(choices, **extra):
            return json.dumps({"id": rid, "object": obj, "created": created, "model": self.model_name,
                               "choices": choices, **extra})

        done = [False] * len(reqs)
        sent = [0] * len(reqs)  # characters of each choice's text so far
        try:
            if kind == "chat":
                yield {"data": chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                       "finish_reason": None} for i in range(len(reqs))])}
            while not all(done):
                i, e = await queue.get()
                if e.finish_reason in ("error", "cancelled"):
                    yield {"data": json.dumps(_error_body(e.error or "the request was cancelled", "server_error"))}
                    return
                done[i] = e.finish_reason is not None
                lp = None if e.logprob is None else _logprobs(kind, [e.logprob], sent[i])
                sent[i] += len(e.text)
                if kind == "chat":
                    delta = {"content": e.text} if e.text or not e.finish_reason else {}
                    choice = {"index": i, "delta": delta, "logprobs": lp, "finish_reason": e.finish_reason}
                else:
                    choice = {"index": i, "text": e.text, "logprobs": lp, "finish_reason": e.finish_reason}
                yield {"data": chunk([choice], **({"usage": None} if include_usage else {}))}
            if include_usage:
                yield {"data": chunk([], usage=self._usage(reqs))}
            yield {"data": "[DONE]"}
        finally:  # finished, or the client went away (the generator is closed): free the slots
            for r in reqs:
                r.cancel()


def _logprobs(kind: str, items, offset: int = 0) -> dict:
    """OpenAI's logprobs object: chat's {"content": [...]}, completions' parallel lists."""
    if kind == "chat":
        def entry(token, logprob):
            return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}
        return {"content": [{**entry(t.token, t.logprob),
                             "top_logprobs": [entry(text, lp) for _, text, lp in t.top_logprobs]} for t in items]}
    offsets = [offset]  # where each token's text starts in the choice's text
    for t in items[:-1]:
        offsets.append(offsets[-1] + len(t.token))
    return {"tokens": [t.token for t in items], "token_logprobs": [t.logprob for t in items],
            "top_logprobs": [{text: lp for _, text, lp in t.top_logprobs} for t in items], "text_offset": offsets}


class _NameTheReplica:
    """Adds the header x-pyruntime-replica (which process answered: Ray replicas) to every HTTP
    response. A plain ASGI middleware: Starlette's @app.middleware("http") would pass every
    chunk of a stream through an extra task and queue."""

    def __init__(self, app, replica: str):
        self.app, self.header = app, (b"x-pyruntime-replica", replica.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def named(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, named)


def create_app(llm: LLM, model_name: str, max_batch: int = 16, api_key: str | None = None) -> FastAPI:
    """The FastAPI app serving llm as `model_name`; app.state.server is its OpenAIServer."""
    server = OpenAIServer(llm, model_name, max_batch, api_key)

    def check_key(http: HTTPRequest):
        if api_key is None:
            return
        auth = http.headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else ""
        if not secrets.compare_digest(given.encode(), api_key.encode()):
            raise APIError(401, "invalid or missing API key (Authorization: Bearer ...)", "invalid_request_error",
                           code="invalid_api_key")

    @contextlib.asynccontextmanager
    async def lifespan(_):
        yield
        server.scheduler.stop()  # (serve() stops it earlier, at the signal)

    app = FastAPI(title="pyruntime", lifespan=lifespan)
    app.state.server = server
    app.add_middleware(_NameTheReplica, replica=f"{socket.gethostname()}:{os.getpid()}")

    @app.exception_handler(APIError)
    async def api_error(_, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        return JSONResponse(status_code=400, content=_error_body(
            f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid request')}", param=".".join(loc) or None))

    @app.get("/health")
    async def health():
        if server.scheduler._stopping:
            raise APIError(503, "the server is shutting down", "server_error")
        sch = server.scheduler
        return {"status": "ok", "active": sch.active, "waiting": sch.waiting, "max_batch": sch.max_batch,
                "decode_steps": sch.steps, "batch_sizes": list(sch.batch_sizes)[-64:]}

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": server.created,
                                            "owned_by": "pyruntime"}]}

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat(body: ChatBody, http: HTTPRequest):
        return await server.run(http, [server.chat_prompt(body)], body, "chat")

    @app.post("/v1/completions", dependencies=[Depends(check_key)])
    async def completions(body: CompletionBody, http: HTTPRequest):
        return await server.run(http, server.completion_prompts(body), body, "text")

    return app


def serve(llm: LLM, model_name: str, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 16,
          api_key: str | None = None, log_level: str = "info") -> None:
    """Runs the server until SIGINT / SIGTERM: requests in flight then end with an error event
    (streams) or a 503 (the others) at once, and the process exits."""
    import uvicorn

    app = create_app(llm, model_name, max_batch, api_key)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            app.state.server.scheduler.stop()
            super().handle_exit(sig, frame)

    Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10)).run()
