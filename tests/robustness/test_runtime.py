"""The runtime under concurrent use, interruption, many calls and long contexts."""

import gc
import math
import resource
import threading

import pytest
import torch

import pyruntime
from tests.conftest import MODEL


def chat(llm, text):
    return llm.render_chat([{"role": "user", "content": text}])


def test_two_threads_each_get_their_own_correct_result(llm):
    prompts = [chat(llm, "What is the capital of France?"), chat(llm, "Name three fruits.")]
    want = [llm.generate(p, max_new_tokens=16).token_ids for p in prompts]
    got = [None, None]
    errors = []

    def work(i):
        try:
            for _ in range(3):
                got[i] = llm.generate(prompts[i], max_new_tokens=16).token_ids
                assert got[i] == want[i]
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and got == want


def test_keyboard_interrupt_leaves_llm_usable(llm, monkeypatch):
    prompt = chat(llm, "Tell me about the moon.")
    want = llm.generate(prompt, max_new_tokens=12).token_ids
    real = llm.engine.decode
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(llm.engine, "decode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        llm.generate(prompt, max_new_tokens=12)
    monkeypatch.setattr(llm.engine, "decode", real)
    again = llm.generate(prompt, max_new_tokens=12)
    assert again.token_ids == want
    # The interrupted call left nothing half-written to be reused as a cached prefix.
    assert again.stats.cached_prompt_tokens in (0, len(llm.tokenizer.encode(prompt)) - 1)


def test_abandoned_stream_releases_the_llm(llm):
    stream = llm.stream(chat(llm, "Count to twenty."), max_new_tokens=30)
    next(stream)
    del stream
    gc.collect()
    # A lock left held by the abandoned stream would make this call hang: run it with a deadline.
    result = []
    worker = threading.Thread(target=lambda: result.append(llm.generate("Hello", max_new_tokens=2)), daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive() and len(result[0].token_ids) == 2


def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@pytest.fixture(scope="module")
def llm_native():
    return pyruntime.LLM(MODEL, progress=False)  # the bundled GGUF in its own types, as users run it


def test_1000_generate_calls_do_not_grow_memory(llm_native):
    llm = llm_native
    prompts = ["Hi", "The sky is", "One two three", "Paris is"]
    llm.generate(prompts[0], max_new_tokens=2)
    gc.collect()
    first = rss_kb()
    for i in range(1000):
        llm.generate(prompts[i % 4], max_new_tokens=2, temperature=0.7 if i % 2 else 0.0, seed=i)
    gc.collect()
    assert rss_kb() <= first * 1.05


def test_long_context_stays_finite(llm_bf16):
    # 4000 prompt tokens through one prefill, then decode to the end of a 4096-token context.
    ids = (llm_bf16.tokenizer.encode("The history of every river is a story of water and stone. ") * 400)[:4000]
    logits = llm_bf16.logits(ids)
    assert torch.isfinite(logits).all()
    c = llm_bf16.generate(ids, max_new_tokens=96, temperature=1.0, seed=0, ignore_eos=True, logprobs=1)
    assert c.stats.prompt_tokens == 4000 and len(c.token_ids) == 96
    # Every step's distribution is finite up to the last of 4096 positions.
    assert all(math.isfinite(lp.logprob) and math.isfinite(lp.top_logprobs[0][2]) for lp in c.logprobs)


def test_large_magnitude_inputs_stay_finite():
    from pyruntime import ops

    x = torch.randn(4, 576) * 1e4
    out = ops.rms_norm(x, torch.ones(576))
    assert torch.isfinite(out).all()
