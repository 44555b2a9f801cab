"""`pyruntime serve` as its users meet it: a real server process on a free port, spoken to with
the official `openai` client and httpx. Greedy answers equal LLM.generate's (the in-process
reference, float32 as the server); 64 concurrent requests all answer correctly and are batched;
JSON-schema output validates for 20 random schemas;
a cancelled stream frees its slot at once; bad requests and bad keys get OpenAI's error JSON
while other streams go on; shutdown with requests in flight ends them with an error."""

import asyncio
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from tests.conftest import MODEL

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("sse_starlette")

KEY = "test-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *args, start_timeout=120):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()  # (a pipe nobody reads would fill and block the server)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyruntime", "serve", MODEL, "--dtype", "float32", "--port", str(self.port),
             "--max-batch", "16", *args], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + start_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"the server exited: {self.log.read().decode(errors='replace')[-4000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not start in {start_timeout} s")

    def wait_for_output(self, text: str, timeout: float = 300) -> None:
        """Until the server has printed `text` (e.g. that every replica is up)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.log.seek(0)
            if text.encode() in self.log.read():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        raise RuntimeError(f"the server did not print {text!r} in {timeout} s")

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def client(self, key=KEY, **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120, **kw)

    def async_client(self, key=KEY):
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=300)

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def server():
    s = Server("--api-key", KEY)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def _chat_ids(llm, messages):
    return llm.tokenizer.apply_chat_template(messages, tokenize=True)


MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert server.health()["status"] == "ok"


@pytest.mark.parametrize("stream", [False, True])
def test_chat_greedy_equals_generate(client, llm, stream):
    want = llm.generate(_chat_ids(llm, MESSAGES), max_new_tokens=24)
    args = dict(model=MODEL, messages=MESSAGES, max_tokens=24, temperature=0)
    if stream:
        chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        usage = chunks[-1].usage
        assert chunks[-1].choices == []
    else:
        r = client.chat.completions.create(**args)
        text, finish, usage = r.choices[0].message.content, [r.choices[0].finish_reason], r.usage
        assert r.choices[0].message.role == "assistant" and r.object == "chat.completion"
    assert text == want.text
    assert finish == [want.finish_reason]
    assert usage.prompt_tokens == want.stats.prompt_tokens
    assert usage.completion_tokens == len(want.token_ids)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_completion_greedy_equals_generate(client, llm, stream):
    prompt = "The river flows"
    want = llm.generate(prompt, max_new_tokens=20, ignore_eos=False)
    args = dict(model=MODEL, prompt=prompt, max_tokens=20, temperature=0)
    if stream:
        chunks = list(client.completions.create(**args, stream=True))
        text = "".join(c.choices[0].text for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        r = client.completions.create(**args)
        text, finish = r.choices[0].text, r.choices[0].finish_reason
        assert r.usage.completion_tokens == len(want.token_ids)
    assert text == want.text and finish == want.finish_reason


def test_completion_of_token_ids_and_several_prompts(client, llm):
    prompts = [llm.tokenizer.encode("Once upon a time"), llm.tokenizer.encode("Water boils at")]
    r = client.completions.create(model=MODEL, prompt=prompts, max_tokens=8, temperature=0)
    assert [c.index for c in r.choices] == [0, 1]
    for p, c in zip(prompts, r.choices):
        assert c.text == llm.generate(p, max_new_tokens=8).text
    assert r.usage.prompt_tokens == sum(len(p) for p in prompts)


def test_logprobs_match_generate(client, llm):
    want = llm.generate(_chat_ids(llm, MESSAGES), max_new_tokens=6, logprobs=3)
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True,
                                       top_logprobs=3)
    got = r.choices[0].logprobs.content
    assert [g.token for g in got] == [w.token for w in want.logprobs]
    for g, w in zip(got, want.logprobs):
        assert g.logprob == pytest.approx(w.logprob, abs=1e-4)
        assert [t.token for t in g.top_logprobs] == [t for _, t, _ in w.top_logprobs]
        assert g.bytes == list(g.token.encode())
    c = client.completions.create(model=MODEL, prompt="The river flows", max_tokens=4, temperature=0, logprobs=2)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert "".join(lp.tokens) == c.choices[0].text
    assert all(max(top.values()) == pytest.approx(t) for top, t in zip(lp.top_logprobs, lp.token_logprobs))


def test_stop_n_and_seed(client, llm):
    want = llm.generate(_chat_ids(llm, MESSAGES), max_new_tokens=24)
    stop = want.text.split()[2]  # a word from the middle of the answer
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=24, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == want.text[: want.text.index(stop)]
    # n samples from one seed: reproducible, and not all the same.
    args = dict(model=MODEL, messages=MESSAGES, max_tokens=16, temperature=1.0, top_p=0.95, n=3, seed=7)
    a = client.chat.completions.create(**args)
    b = client.chat.completions.create(**args)
    texts = [c.message.content for c in a.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in b.choices]
    assert len(set(texts)) > 1
    assert a.usage.prompt_tokens == len(_chat_ids(llm, MESSAGES))


def _prompts(k):
    subjects = ["rivers", "mountains", "bread", "the moon", "winter", "cats", "music", "the sea", "trees", "rain",
                "cities", "books", "coffee", "stars", "gardens", "trains"]
    return [[{"role": "user", "content": f"Write one sentence about {subjects[i % 16]}."}] for i in range(k)]


def test_64_concurrent_requests_batched_and_equal_to_alone(server, llm):
    prompts = _prompts(64)
    want = {i: llm.generate(_chat_ids(llm, prompts[i]), max_new_tokens=12).text for i in range(16)}

    async def main():
        client = server.async_client()

        async def one(i):
            if i % 2:
                r = await client.chat.completions.create(model=MODEL, messages=prompts[i], max_tokens=12, temperature=0)
                return r.choices[0].message.content
            stream = await client.chat.completions.create(model=MODEL, messages=prompts[i], max_tokens=12,
                                                          temperature=0, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream])

        return await asyncio.gather(*[one(i) for i in range(64)])

    before = server.health()["decode_steps"]
    got = asyncio.run(main())
    assert got == [want[i % 16] for i in range(64)]
    h = server.health()
    assert h["active"] == 0 and h["waiting"] == 0
    steps = h["decode_steps"] - before
    # Far fewer steps than 64 requests x 11 decode steps one after another; the KV cache's 16
    # slots all decoding together.
    assert steps < 64 * 11 / 4
    assert max(h["batch_sizes"][-min(steps, 64):]) == 16


def test_cancelled_streams_free_their_slots(server):
    client = server.client()
    streams = [client.chat.completions.create(model=MODEL, messages=p, max_tokens=200, temperature=0, stream=True)
               for p in _prompts(16)]
    for s in streams:
        next(iter(s))  # the first chunk: every request is in
    assert server.health()["active"] + server.health()["waiting"] > 0
    for s in streams:
        s.close()  # the client goes away mid-stream
    deadline = time.time() + 30
    while server.health()["active"] and time.time() < deadline:
        time.sleep(0.05)
    assert server.health()["active"] == 0
    # The next 16 requests run at full batch again.
    before = server.health()["decode_steps"]

    async def main():
        c = server.async_client()
        return await asyncio.gather(*[c.chat.completions.create(model=MODEL, messages=p, max_tokens=8, temperature=0)
                                      for p in _prompts(16)])

    rs = asyncio.run(main())
    assert all(r.choices[0].finish_reason in ("stop", "length") for r in rs)
    h = server.health()
    steps = h["decode_steps"] - before
    assert steps <= 2 * 7 and max(h["batch_sizes"][-steps:]) == 16


def test_json_schema_output_validates_for_20_random_schemas(server, llm):
    jsonschema = pytest.importorskip("jsonschema")
    from tests.runtime.test_json_schema import SCHEMAS

    def messages(schema):
        return [{"role": "user", "content": f"Reply with a JSON object for this schema: {json.dumps(schema)}"}]

    async def main():
        c = server.async_client()
        return await asyncio.gather(*[c.chat.completions.create(
            model=MODEL, messages=messages(schema), max_tokens=200, temperature=0 if i % 2 == 0 else 1.0, seed=i,
            response_format={"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema}})
            for i, schema in enumerate(SCHEMAS)])

    rs = asyncio.run(main())
    for i, (r, schema) in enumerate(zip(rs, SCHEMAS)):
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)
        if i % 2 == 0:  # greedy: as LLM.generate with the same schema
            ids = _chat_ids(llm, messages(schema))
            assert r.choices[0].message.content == llm.generate(ids, max_new_tokens=200, json_schema=schema).text
    obj = server.client().chat.completions.create(
        model=MODEL, max_tokens=200, temperature=0, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Describe Paris as a JSON object with a name and a country."}])
    assert isinstance(json.loads(obj.choices[0].message.content), dict)


@pytest.mark.parametrize("body,param", [
    (dict(messages=MESSAGES, temperature=5), "temperature"),
    (dict(messages=[]), "messages"),
    (dict(messages=MESSAGES, max_tokens=0), "max_tokens"),
    (dict(messages=MESSAGES, n=0), "n"),
    (dict(messages=MESSAGES, max_tokens=10**6), "max_tokens"),
    (dict(messages=[{"role": "user", "content": "word " * 5000}]), "messages"),
    (dict(messages=MESSAGES, response_format={"type": "yaml"}), "response_format"),
    (dict(messages=MESSAGES, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "objectx"}}}), "response_format"),
    (dict(messages="hello"), "messages"),
])
def test_bad_requests_get_400_while_a_stream_goes_on(server, client, body, param):
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=30, temperature=0, stream=True)
    it = iter(stream)
    first = next(it)
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": MODEL, **body},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    rest = [first] + list(it)
    assert rest[-1].choices[0].finish_reason in ("stop", "length")


def test_bad_key_gets_401(server):
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").models.list()
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "hi"}, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200  # no key needed


def test_shutdown_ends_requests_in_flight_with_an_error():
    s = Server()
    try:
        client = s.client()
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2000, temperature=1.0,
                                                seed=1, stream=True, extra_body={"ignore_eos": True})
        it = iter(stream)
        next(it)
        t0 = time.time()
        s.proc.send_signal(signal.SIGTERM)
        with pytest.raises((openai.APIError, httpx.HTTPError)):
            for _ in it:
                pass
        assert s.proc.wait(timeout=30) is not None
        assert time.time() - t0 < 30
    finally:
        s.stop()
