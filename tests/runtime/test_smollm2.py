"""The bundled SmolLM2-135M-Instruct against transformers loading the same GGUF file."""

import pytest
import torch

PLAIN_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
]
CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
]


def chat_ids(tokenizer, text):
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)


def as_list(ids):
    return ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else list(ids)


@pytest.mark.parametrize("text", PLAIN_PROMPTS + CHAT_PROMPTS)
def test_logits_match_transformers(llm, hf_model, hf_tokenizer, text):
    ids = hf_tokenizer(text).input_ids if text in PLAIN_PROMPTS else as_list(chat_ids(hf_tokenizer, text))
    with torch.no_grad():
        want = hf_model(torch.tensor([ids])).logits[0].float()
    got = llm.logits(ids)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert (got - want).abs().max().item() < 1e-3


def test_capital_of_france_near_tie(llm, hf_tokenizer):
    # "The" and "L" are 0.08 apart: a canary for numerics.
    ids = as_list(chat_ids(hf_tokenizer, "What is the capital of France?"))
    logits = llm.logits(ids)[-1]
    top2 = logits.topk(2).indices.tolist()
    assert [hf_tokenizer.decode([t]) for t in top2] == ["The", "L"]


@pytest.mark.parametrize("text", PLAIN_PROMPTS)
def test_greedy_plain_matches_transformers(llm, hf_model, hf_tokenizer, text):
    ids = hf_tokenizer(text).input_ids
    out = hf_model.generate(torch.tensor([ids]), max_new_tokens=64, do_sample=False)
    want = out[0, len(ids):].tolist()
    got = llm.generate(text, max_new_tokens=64)
    assert got.token_ids == want
    assert got.text == hf_tokenizer.decode([t for t in want if t not in llm.eos_token_ids])


@pytest.mark.parametrize("text", CHAT_PROMPTS)
def test_greedy_chat_matches_transformers(llm, hf_model, hf_tokenizer, text):
    ids = as_list(chat_ids(hf_tokenizer, text))
    out = hf_model.generate(torch.tensor([ids]), max_new_tokens=64, do_sample=False)
    want = out[0, len(ids):].tolist()
    got = llm.chat([{"role": "user", "content": text}], max_new_tokens=64)
    assert got.token_ids == want
    assert got.finish_reason == ("stop" if want[-1] in llm.eos_token_ids else "length")


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_low_precision_agrees_with_float32(llm, llm_bf16, llm_int8, hf_tokenizer, dtype):
    # Teacher-forced: the same token sequence through both; top-1 agreement per position.
    text = (
        "The history of the Roman Empire spans many centuries. It began when Augustus became the first emperor "
        "in 27 BC and, in the West, ended in 476 AD. The empire was known for its roads, its laws and its army. "
        + "Python is a programming language that lets you work quickly and integrate systems effectively."
    )
    ids = hf_tokenizer(text).input_ids + as_list(chat_ids(hf_tokenizer, "Explain photosynthesis briefly."))
    ref = llm.logits(ids).argmax(-1)
    got = {"bfloat16": llm_bf16, "int8": llm_int8}[dtype].logits(ids).argmax(-1)
    agreement = (ref == got).float().mean().item()
    assert agreement >= 0.95, agreement


TEXTS = [
    "Hello, world!",
    "  leading and trailing spaces   ",
    "tabs\tand\nnewlines\n\n\nand   runs     of spaces",
    "中文测试：北京是中国的首都。",
    "emoji 🤗🚀👍🏽 and ZWJ 👨‍👩‍👧",
    "<|im_start|>user\nhi<|im_end|>",
    "numbers 1234567890 3.14159 -42",
    "mixed Ünïcödé façade naïve",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_matches_transformers(llm, hf_tokenizer, hf_gguf_tokenizer, text):
    ids = llm.tokenizer.encode(text)
    assert ids == hf_tokenizer(text).input_ids
    assert ids == hf_gguf_tokenizer(text).input_ids
    assert llm.tokenizer.decode(ids) == hf_tokenizer.decode(ids)
    assert llm.tokenizer.decode(ids, skip_special_tokens=True) == hf_tokenizer.decode(ids, skip_special_tokens=True)


def test_chat_template_matches_transformers(llm, hf_tokenizer):
    conversations = [
        [{"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}],
    ]
    for messages in conversations:
        want = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert llm.render_chat(messages) == want
