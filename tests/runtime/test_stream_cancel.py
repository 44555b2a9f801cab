"""A stream left suspended (interrupted, abandoned by an exception, interleaved with another
stream) never blocks its LLM: the next call cancels it and gets exactly what a newly loaded
LLM gives after the same calls run whole, reusing only the K/V the cancelled stream really
wrote, and the old stream's next next() raises RuntimeError. Every call that could deadlock runs against a deadline."""

import threading
import time

import pytest

import pyruntime
from pyruntime.detokenize import TextStream
from tests.conftest import MODEL

DEADLINE_S = 60  # each guarded call takes well under a second here; a deadlock fails instead of hanging


@pytest.fixture
def llm():
    """An LLM of its own for each test (loading takes a fraction of a second): a deadlock left
    behind by a failing test cannot hang the tests after it."""
    return pyruntime.LLM(MODEL, progress=False)


def chat(llm, text):
    return llm.render_chat([{"role": "user", "content": text}])


def within_deadline(fn):
    """fn() on a worker thread, its result returned and its exception re-raised here."""
    result, errors = [], []

    def work():
        try:
            result.append(fn())
        except BaseException as e:  # re-raised below
            errors.append(e)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(DEADLINE_S)
    assert not worker.is_alive(), f"deadlock: the call did not return within {DEADLINE_S} s"
    if errors:
        raise errors[0]
    return result[0]


def fresh_greedy(prompt, max_new_tokens):
    """The tokens a newly loaded LLM generates greedily: no earlier call, no cached prefix."""
    c = pyruntime.LLM(MODEL, progress=False).generate(prompt, max_new_tokens=max_new_tokens)
    assert c.stats.cached_prompt_tokens == 0
    return c.token_ids


def after_a_run_of(earlier, prompt, max_new_tokens):
    """What a newly loaded LLM generates greedily for `prompt` after a whole run of `earlier`:
    the same prefix of the two prompts reused from the cache, its K/V written by the same
    prefill. A cancelled stream must leave exactly that (the rest of a prompt after a reused
    prefix goes in a shorter chunk, so it equals a fresh run only to rounding)."""
    new = pyruntime.LLM(MODEL, progress=False)
    new.generate(earlier, max_new_tokens=1)
    return new.generate(prompt, max_new_tokens=max_new_tokens)


def interrupt_after(stream, pieces, exc=KeyboardInterrupt):
    """Consumes `pieces` pieces of the stream, then raises exc inside the consumer's loop (as
    Ctrl-C does), leaving the stream suspended and still referenced by the caller."""
    got = []
    with pytest.raises(exc):
        for piece in stream:
            got.append(piece)
            if len(got) == pieces:
                raise exc()
    return got


def tokens_behind(llm, token_ids, pieces):
    """How many of token_ids a stream has sampled when it hands out its `pieces`-th piece."""
    ts = TextStream(llm.tokenizer, [])
    n = 0
    for i, t in enumerate(token_ids):
        n += bool(ts.push(t))
        if n == pieces:
            return i + 1
    raise AssertionError("fewer pieces than asked for")


def assert_superseded(stream):
    with pytest.raises(RuntimeError, match="superseded"):
        next(stream)


def test_interrupted_stream_kept_then_generate_on_the_same_thread(llm):
    prompt, other = chat(llm, "Count to twenty."), chat(llm, "Name three fruits.")
    want = fresh_greedy(other, 12)

    def scenario():
        it = llm.stream(prompt, max_new_tokens=20)
        interrupt_after(it, 3)
        return it, llm.generate(other, max_new_tokens=12)

    it, c = within_deadline(scenario)
    assert c.token_ids == want
    assert_superseded(it)


def test_interrupted_stream_kept_then_generate_on_another_thread(llm):
    prompt, other = chat(llm, "Count to twenty."), chat(llm, "Name three fruits.")
    want = after_a_run_of(prompt, other, 12)
    it = llm.stream(prompt, max_new_tokens=20)
    interrupt_after(it, 3)
    c = within_deadline(lambda: llm.generate(other, max_new_tokens=12))
    assert c.stats.cached_prompt_tokens == want.stats.cached_prompt_tokens > 0
    assert c.token_ids == want.token_ids
    assert_superseded(it)


def test_stream_abandoned_by_another_exception(llm):
    prompt, other = chat(llm, "Tell me about the moon."), chat(llm, "What is 2 + 2?")
    want = after_a_run_of(prompt, other, 8)
    it = llm.stream(prompt, max_new_tokens=20)
    interrupt_after(it, 2, exc=ValueError)
    c = within_deadline(lambda: llm.generate(other, max_new_tokens=8))
    assert c.stats.cached_prompt_tokens == want.stats.cached_prompt_tokens > 0
    assert c.token_ids == want.token_ids
    assert_superseded(it)
    with pytest.raises(StopIteration):  # cancelled for good
        next(it)


def test_second_stream_supersedes_the_first(llm):
    first, second = chat(llm, "Count to twenty."), chat(llm, "Name a color.")
    # b reuses the chat template's prefix that a's prompt wrote, as after a whole run of a.
    ids = after_a_run_of(first, second, 8).token_ids
    want = llm.tokenizer.decode([t for t in ids if t not in llm.eos_token_ids])

    def scenario():
        a, b = llm.stream(first, max_new_tokens=30), llm.stream(second, max_new_tokens=8)
        next(a)
        next(a)
        head = next(b)  # b's start takes the LLM from a
        with pytest.raises(RuntimeError, match="superseded"):
            next(a)
        return head + "".join(b)

    assert within_deadline(scenario) == want


def test_streams_interleaved_piece_by_piece(llm):
    first, second = chat(llm, "Name three fruits."), chat(llm, "Name three rivers.")
    want_first = fresh_greedy(first, 12)

    def scenario():
        a, b = llm.stream(first, max_new_tokens=12), llm.stream(second, max_new_tokens=12)
        next(a)
        next(b)
        with pytest.raises(RuntimeError, match="superseded by a later call on the same LLM"):
            next(a)
        next(b)
        c = llm.generate(first, max_new_tokens=12)  # supersedes b in turn
        with pytest.raises(RuntimeError, match="superseded"):
            next(b)
        return c

    assert within_deadline(scenario).token_ids == want_first


def test_stream_not_yet_started_is_not_superseded(llm):
    # A stream takes the LLM at its first next(), not when it is created.
    prompt = chat(llm, "Name a color.")
    want = llm.generate(prompt, max_new_tokens=8).text
    it = llm.stream(prompt, max_new_tokens=8)
    within_deadline(lambda: llm.generate("Hello", max_new_tokens=2))
    assert "".join(it) == want


def test_finished_stream_is_not_superseded(llm):
    prompt = chat(llm, "Name a color.")
    llm.generate(prompt, max_new_tokens=4)
    want = after_a_run_of(prompt, prompt, 4).text  # the stream reuses the prompt's cached K/V
    it = llm.stream(prompt, max_new_tokens=4)
    pieces = []
    while "".join(pieces) != want:  # every piece out: done, though not yet told so
        pieces.append(next(it))
    within_deadline(lambda: llm.generate("Hello", max_new_tokens=2))
    assert list(it) == []


def test_logits_supersedes_a_suspended_stream(llm):
    it = llm.stream(chat(llm, "Count to twenty."), max_new_tokens=30)
    next(it)
    ids = llm.tokenizer.encode("The sky is")
    within_deadline(lambda: llm.logits(ids))
    assert_superseded(it)


def test_prompt_cache_after_a_cancelled_stream_reuses_only_what_it_wrote(llm):
    # A follow-up prompt that continues the stream past what it fed to the model: the stream's
    # prompt and every token it fed may be reused; its last sampled token, never fed, may not.
    # The reference replays the same history on a new LLM with a stream that is not cancelled
    # (it samples exactly as many tokens, so it feeds the same ones): the reused K/V, written
    # by decode steps, equal a fresh prefill's only to rounding, so the follow-up is compared
    # with the run that reuses the same K/V and must match it bit for bit.
    prompt_ids = llm.tokenizer.encode(chat(llm, "Describe a forest at night."))
    # Other tokens' K/V at the positions the stream does not reach, to be wrongly reused.
    filler = prompt_ids[:5] + llm.tokenizer.encode(" a lot of unrelated filler text " * 10)

    def after_filler():
        new = pyruntime.LLM(MODEL, progress=False)
        new.logits(filler)
        return new

    streamed = after_filler().generate(prompt_ids, max_new_tokens=14).token_ids  # the stream's tokens
    follow = prompt_ids + streamed[:12] + llm.tokenizer.encode(" And then?")
    pieces = 6
    sampled = tokens_behind(llm, streamed, pieces)

    replay = after_filler()
    assert replay.generate(prompt_ids, max_new_tokens=sampled).token_ids == streamed[:sampled]
    want = replay.generate(follow, max_new_tokens=8)

    llm.logits(filler)
    it = llm.stream(prompt_ids, max_new_tokens=14)
    interrupt_after(it, pieces)
    c = within_deadline(lambda: llm.generate(follow, max_new_tokens=8))
    assert len(prompt_ids) <= c.stats.cached_prompt_tokens <= len(prompt_ids) + sampled - 1
    assert c.stats.cached_prompt_tokens == want.stats.cached_prompt_tokens
    assert c.token_ids == want.token_ids
    assert_superseded(it)


def test_prompt_cache_after_a_cancelled_stream_forgets_the_call_before_it(llm):
    # The call before the stream cached a long prefix; the stream then overwrote it from the
    # point the two prompts diverge, so a prompt continuing that earlier call reuses no more.
    earlier = chat(llm, "What is the capital of Italy?")
    first = llm.generate(earlier, max_new_tokens=16)
    earlier_ids = llm.tokenizer.encode(earlier)
    follow = earlier_ids + first.token_ids + llm.tokenizer.encode("\n<|im_start|>user\nAnd of Spain?<|im_end|>\n<|im_start|>assistant\n")
    want = fresh_greedy(follow, 8)
    diverging = llm.tokenizer.encode(chat(llm, "What is the capital of Peru?"))
    shared = next(i for i, (x, y) in enumerate(zip(earlier_ids, diverging)) if x != y)
    it = llm.stream(diverging, max_new_tokens=8)
    interrupt_after(it, 2)
    c = within_deadline(lambda: llm.generate(follow, max_new_tokens=8))
    assert c.stats.cached_prompt_tokens <= shared
    assert c.token_ids == want
    assert_superseded(it)


def test_call_from_another_thread_waits_for_the_running_step(llm, monkeypatch):
    # The lock covers a step's compute: a call from another thread while a stream's step runs
    # waits for that step, then supersedes the stream; no two forward passes ever overlap.
    prompt, other = chat(llm, "Count to twenty."), chat(llm, "Name three fruits.")
    want = fresh_greedy(other, 12)
    in_step, release = threading.Event(), threading.Event()
    running, overlaps = [], []
    hold_next = {"armed": False}

    def tracked(real):
        def call(*args, **kwargs):
            running.append(threading.get_ident())
            if len(running) > 1:
                overlaps.append(list(running))
            try:
                if hold_next["armed"]:
                    hold_next["armed"] = False
                    in_step.set()
                    release.wait(DEADLINE_S)
                return real(*args, **kwargs)
            finally:
                running.remove(threading.get_ident())
        return call

    monkeypatch.setattr(llm.engine, "prefill", tracked(llm.engine.prefill))
    monkeypatch.setattr(llm.engine, "decode", tracked(llm.engine.decode))
    it = llm.stream(prompt, max_new_tokens=30)
    first = next(it)
    hold_next["armed"] = True
    stepping = threading.Thread(target=lambda: next(it), daemon=True)
    stepping.start()
    assert in_step.wait(DEADLINE_S)
    result = []
    caller = threading.Thread(target=lambda: result.append(llm.generate(other, max_new_tokens=12)), daemon=True)
    caller.start()
    time.sleep(0.5)
    assert not result  # waiting for the running step
    release.set()
    stepping.join(DEADLINE_S)
    caller.join(DEADLINE_S)
    assert not stepping.is_alive() and not caller.is_alive(), "deadlock"
    assert not overlaps
    assert first and result[0].token_ids == want
    assert_superseded(it)
