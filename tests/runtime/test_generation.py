"""Generation behaviour of LLM on the bundled model: streaming, batches, prompt caching,
log-probabilities, stop strings, sampling."""

import pytest
import torch

PROMPT = "Write a short poem about autumn leaves."


def chat(llm, text):
    return llm.render_chat([{"role": "user", "content": text}])


def test_stream_joins_to_generate_text(llm):
    prompt = chat(llm, "Say hello in French, Chinese and with an emoji.")
    full = llm.generate(prompt, max_new_tokens=48)
    pieces = list(llm.stream(prompt, max_new_tokens=48))
    assert "".join(pieces) == full.text
    assert len(pieces) > 5
    assert all("\ufffd" not in p for p in pieces)
    assert full.text == llm.tokenizer.decode([t for t in full.token_ids if t not in llm.eos_token_ids])


def test_stream_never_splits_a_character(llm):
    # Byte-level BPE splits CJK characters and emoji across tokens.
    ids = llm.tokenizer.encode("猫🐈‍⬛の絵文字")
    from pyruntime.detokenize import TextStream

    ts = TextStream(llm.tokenizer, [])
    pieces = [ts.push(t) for t in ids] + [ts.finish()]
    assert "".join(pieces) == "猫🐈‍⬛の絵文字"
    assert all("\ufffd" not in p for p in pieces)


def test_batch_equals_alone(llm):
    prompts = [chat(llm, "What is 2 + 2?"), "The quick brown fox", chat(llm, "Name a color.")]
    alone = [llm.generate(p, max_new_tokens=24) for p in prompts]
    together = llm.generate(prompts, max_new_tokens=24)
    assert isinstance(together, list) and len(together) == 3
    for a, b in zip(alone, together):
        assert a.token_ids == b.token_ids
        assert a.text == b.text
        assert a.finish_reason == b.finish_reason


def test_batch_larger_than_a_decode_group_equals_alone(llm):
    # 20 sequences: more than one engine call per step; each still gets exactly its own result.
    # (Each prompt starts with its own token: alone, none reuses the previous call's cache, which
    # would leave the rest of it to a shorter prompt chunk, equal only to the float rounding.)
    words = ["Red", "Blue", "Green", "Apple", "House", "River", "Stone", "Cloud", "Tree", "Bird",
             "Fish", "Snow", "Rain", "Wind", "Fire", "Moon", "Star", "Road", "Door", "Book"]
    prompts = [f"{w}: the colour of the sky is" for w in words]
    together = llm.generate(prompts, max_new_tokens=3, logprobs=1)
    for p, b in zip(prompts, together):
        a = llm.generate(p, max_new_tokens=3, logprobs=1)
        assert a.stats.cached_prompt_tokens == 0
        assert a.token_ids == b.token_ids
        assert [x.logprob for x in a.logprobs] == [x.logprob for x in b.logprobs]


def test_batch_of_token_id_lists_with_sampling_and_seed(llm):
    ids = [llm.tokenizer.encode("Tell me a story"), llm.tokenizer.encode("Hello")]
    alone = [llm.generate(p, max_new_tokens=16, temperature=0.8, top_p=0.9, seed=7) for p in ids]
    together = llm.generate(ids, max_new_tokens=16, temperature=0.8, top_p=0.9, seed=7)
    assert [c.token_ids for c in alone] == [c.token_ids for c in together]


def test_prompt_cache_reuses_prefix_and_matches_cold(llm):
    first = chat(llm, "What is the capital of Italy?")
    a = llm.generate(first, max_new_tokens=16)
    follow = llm.tokenizer.decode(llm.tokenizer.encode(first) + a.token_ids) + "\n<|im_start|>user\nAnd of Spain?<|im_end|>\n<|im_start|>assistant\n"
    warm = llm.generate(follow, max_new_tokens=16)
    assert warm.stats.cached_prompt_tokens >= len(llm.tokenizer.encode(first))
    llm.logits([1, 2, 3])  # replaces the cached prefix
    cold = llm.generate(follow, max_new_tokens=16)
    assert cold.stats.cached_prompt_tokens <= 3
    assert cold.token_ids == warm.token_ids


def test_logprobs(llm):
    prompt = chat(llm, "Count to five.")
    c = llm.generate(prompt, max_new_tokens=6, logprobs=3)
    assert len(c.logprobs) == len(c.token_ids)
    ids = llm.tokenizer.encode(prompt) + c.token_ids
    ref = torch.log_softmax(llm.logits(ids), dim=-1)
    for i, lp in enumerate(c.logprobs):
        row = ref[len(ids) - len(c.token_ids) - 1 + i]
        assert lp.token_id == c.token_ids[i]
        assert abs(lp.logprob - row[lp.token_id].item()) < 1e-3
        assert [t for t, _, _ in lp.top_logprobs] == row.topk(3).indices.tolist()
        assert lp.top_logprobs[0][2] >= lp.top_logprobs[1][2] >= lp.top_logprobs[2][2]


def test_stop_string_cuts_text(llm):
    prompt = chat(llm, "Count from 1 to 10, separated by commas.")
    full = llm.generate(prompt, max_new_tokens=40)
    assert "5" in full.text
    stop = "5"
    c = llm.generate(prompt, max_new_tokens=40, stop=[stop])
    assert c.finish_reason == "stop"
    assert c.text == full.text[: full.text.index(stop)]
    assert "".join(llm.stream(prompt, max_new_tokens=40, stop=stop)) == c.text


def test_length_and_eos_finish_reasons(llm):
    c = llm.generate(chat(llm, "Write a long essay about rivers."), max_new_tokens=5)
    assert c.finish_reason == "length" and len(c.token_ids) == 5
    c = llm.generate(chat(llm, "Reply with just the word yes."), max_new_tokens=50)
    assert c.finish_reason == "stop" and c.token_ids[-1] in llm.eos_token_ids
    assert c.stats.completion_tokens == len(c.token_ids) and c.stats.prompt_tokens > 0
    assert c.stats.ttft_s > 0


def test_seed_reproducible_and_temperature_varies(llm):
    prompt = chat(llm, PROMPT)
    a = llm.generate(prompt, max_new_tokens=20, temperature=1.0, seed=123)
    b = llm.generate(prompt, max_new_tokens=20, temperature=1.0, seed=123)
    assert a.token_ids == b.token_ids
    others = {tuple(llm.generate(prompt, max_new_tokens=20, temperature=1.0, seed=s).token_ids) for s in range(4)}
    assert len(others) > 1


def test_top_k_1_is_greedy(llm):
    prompt = chat(llm, PROMPT)
    greedy = llm.generate(prompt, max_new_tokens=12)
    assert llm.generate(prompt, max_new_tokens=12, temperature=0.7, top_k=1, seed=3).token_ids == greedy.token_ids
    assert llm.generate(prompt, max_new_tokens=12, temperature=0.7, min_p=1.0, seed=3).token_ids == greedy.token_ids


def test_repetition_penalty_matches_transformers_processor(llm):
    transformers = pytest.importorskip("transformers")
    proc = transformers.RepetitionPenaltyLogitsProcessor(1.3)
    from pyruntime.sampling import Sampler, SamplingParams

    logits = torch.randn(50)
    seen = [3, 7, 7, 11]
    want = proc(torch.tensor([seen]), logits.clone()[None])[0]
    sampler = Sampler(SamplingParams(repetition_penalty=1.3), seen)
    assert sampler(logits) == int(want.argmax())


def test_zero_new_tokens(llm):
    c = llm.generate("Hello", max_new_tokens=0)
    assert c.token_ids == [] and c.text == "" and c.finish_reason == "length"


def test_kv_cache_size_reported(llm):
    c = llm.config
    assert llm.kv_cache_bytes == 2 * c.num_layers * c.num_kv_heads * c.head_dim * llm.max_seq_len * 4
    assert llm.max_seq_len == min(c.max_position_embeddings, 4096)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(min_p=2.0), "min_p"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(max_new_tokens=5000), "max_seq_len"),
        (dict(stop=[""]), "stop"),
        (dict(logprobs=-1), "logprobs"),
        (dict(seed="x"), "seed"),
    ],
)
def test_bad_arguments(llm, kwargs, match):
    with pytest.raises(ValueError, match=match):
        llm.generate("Hello", **kwargs)


def test_bad_prompts(llm):
    with pytest.raises(ValueError, match="empty"):
        llm.generate("")
    with pytest.raises(ValueError, match="empty"):
        llm.generate([])
    with pytest.raises(ValueError, match="token ids"):
        llm.generate([1, 2, 10**6])
    with pytest.raises(ValueError, match="token ids"):
        llm.generate([1, -3])
    with pytest.raises(ValueError, match="prompt"):
        llm.generate(42)
    with pytest.raises(ValueError, match="stream"):
        next(llm.stream(["a", "b"]))


def test_chat_turns_reuse_the_kv_cache_of_earlier_turns(llm):
    # The flow of `pyruntime chat`: the whole history is rendered again each turn, and only
    # what follows the previous turn's tokens is prefilled.
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    first_prompt = llm.render_chat(messages)
    first = llm.generate(first_prompt, max_new_tokens=30)
    messages += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And of Germany?"}]
    second = llm.generate(llm.render_chat(messages), max_new_tokens=30)
    reused = second.stats.cached_prompt_tokens
    assert reused >= len(llm.tokenizer.encode(first_prompt)) + len(first.token_ids) - 1
    assert "Berlin" in second.text
