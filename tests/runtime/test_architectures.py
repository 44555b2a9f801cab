"""Tiny random-weight models of every supported architecture, built from transformers'
config classes and saved with save_pretrained, every feature of the family switched on (sliding
windows shorter than the test sequences): pyruntime's float32 logits over a 300-token sequence
within 1e-4 of transformers', in one prompt and token by token, 32 greedy tokens identical, a
batch of 3 prompts equal to each alone, and a continuation over the prompt cache equal to a fresh
run."""

import shutil

import pytest
import torch

import pyruntime
from pyruntime.reference import TorchReference

transformers = pytest.importorskip("transformers")

COMMON = dict(vocab_size=49152, hidden_size=128, intermediate_size=200, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5)

ARCHS = {
    "llama": lambda: transformers.LlamaConfig(**COMMON, tie_word_embeddings=True),
    "llama-untied-mha": lambda: transformers.LlamaConfig(**{**COMMON, "num_key_value_heads": 4}, tie_word_embeddings=False),
    "llama3-rope-scaling": lambda: transformers.LlamaConfig(
        **COMMON, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64}),
    "llama-dynamic-rope": lambda: transformers.LlamaConfig(
        **COMMON, rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}),
    "qwen2-yarn": lambda: transformers.Qwen2Config(
        **COMMON, rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                                   "rope_theta": 10000.0}),
    # longrope past original_max_position_embeddings (the long factors), on half of each head.
    "phi3-longrope": lambda: transformers.Phi3Config(
        **COMMON, pad_token_id=0, bos_token_id=1, eos_token_id=2, original_max_position_embeddings=32,
        partial_rotary_factor=0.5,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                         "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.1, 3.8],
                         "long_factor": [1.0, 1.5, 2.5, 4.0, 6.0, 9.0, 13.0, 18.0]}),
    "llama-linear-rope": lambda: transformers.LlamaConfig(**COMMON, rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "llama-attention-bias": lambda: transformers.LlamaConfig(**COMMON, attention_bias=True),
    "mistral": lambda: transformers.MistralConfig(**COMMON, head_dim=32),
    # Every layer's window 100: window starts off the 64-key blocks, several decode splits.
    "mistral-sliding-window": lambda: transformers.MistralConfig(**COMMON, sliding_window=100),
    "qwen2": lambda: transformers.Qwen2Config(**COMMON, tie_word_embeddings=True),
    # A full layer, then a sliding one (window 21: shorter than the greedy test's sequence).
    "qwen2-sliding-window": lambda: transformers.Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=21,
                                                             max_window_layers=1),
    # qk-norm, and a head_dim that is not hidden / heads (64 x 4 heads against hidden 128).
    "qwen3": lambda: transformers.Qwen3Config(**COMMON, head_dim=64, tie_word_embeddings=True),
    "phi3": lambda: transformers.Phi3Config(**COMMON, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                            sliding_window=64),
    # Embeddings times sqrt(hidden), norms x * (1 + w), post-norms, GELU(tanh), query_pre_attn_scalar,
    # soft-capped scores and logits (small caps, so that they bite), every 2nd layer a window of 50.
    "gemma2": lambda: transformers.Gemma2Config(**{**COMMON, "num_hidden_layers": 3}, head_dim=32,
                                                query_pre_attn_scalar=24, sliding_window=50,
                                                attn_logit_softcapping=2.0, final_logit_softcapping=3.0),
    # As Gemma 2 without caps, with qk-norm, a local RoPE base on the sliding layers and a global one
    # with linear scaling on the full ones, the layer pattern from the config (3: two sliding, one full).
    "gemma3": lambda: transformers.Gemma3TextConfig(
        **{**COMMON, "num_hidden_layers": 3}, head_dim=32, query_pre_attn_scalar=24, sliding_window=50,
        sliding_window_pattern=3,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
    "head-dim-64": lambda: transformers.LlamaConfig(**{**COMMON, "num_attention_heads": 2, "num_key_value_heads": 1}),
}


def _model_class(cfg):
    return transformers.AutoModelForCausalLM.from_config(cfg)


def _build(name, tmp_path_factory, llm):
    torch.manual_seed(0)
    cfg = ARCHS[name]()
    model = _model_class(cfg).eval()
    # Non-trivial norms and biases; Gemma's norms scale by 1 + w, so their w lie around 0.
    norm_mean = 0.0 if name.startswith("gemma") else 1.0
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight") or pname.endswith(".bias"):
                p.normal_(norm_mean if "norm" in pname else 0.0, 0.2)
    folder = tmp_path_factory.mktemp(name)
    shard = "300KB" if name == "llama" else "10GB"  # one sharded checkpoint
    model.save_pretrained(folder, max_shard_size=shard)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(llm.path / f, folder / f)
    return name, model, folder


@pytest.fixture(scope="module", params=sorted(ARCHS))
def tiny(request, tmp_path_factory, llm):
    return _build(request.param, tmp_path_factory, llm)


# The families with sliding-window layers: their caches keep a ring of the last positions.
WINDOWED = ["gemma2", "gemma3", "mistral-sliding-window", "phi3", "qwen2-sliding-window"]


@pytest.fixture(scope="module", params=WINDOWED)
def windowed(request, tmp_path_factory, llm):
    return _build(request.param, tmp_path_factory, llm)


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(3, 49152, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _want(model, ids) -> torch.Tensor:
    """transformers' logits of every token of ids."""
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def _token_by_token(eng, ids, prompt: int) -> torch.Tensor:
    """The engine's logits of ids[prompt - 1:]: a prompt of `prompt` tokens, then a decode step a token."""
    got = [eng.prefill(torch.tensor(ids[:prompt]), 0, 0)[None]]
    got += [eng.decode(torch.tensor([ids[i]]), torch.tensor([i])) for i in range(prompt, len(ids))]
    return torch.cat(got)


def test_logits_match_transformers(tiny):
    name, model, folder = tiny
    if name == "llama":
        assert (folder / "model.safetensors.index.json").exists()
    llm = pyruntime.LLM(folder, dtype="float32", kv_dtype="float32", progress=False)
    ids = _ids(300, 0)  # two prompt chunks of the engine
    want = _want(model, ids)
    got = llm.logits(ids)
    assert (got - want).abs().max().item() < 1e-4


@pytest.mark.parametrize("max_seq_len", [None, 333])  # key tiles; rows (333 is not a multiple of 16)
def test_token_by_token_logits_match_transformers(tiny, max_seq_len):
    name, model, folder = tiny
    llm = pyruntime.LLM(folder, dtype="float32", kv_dtype="float32", max_seq_len=max_seq_len, progress=False)
    ids = _ids(300, 6)
    got = _token_by_token(llm.engine, ids, 20)
    assert (got - _want(model, ids)[19:]).abs().max().item() < 1e-4


def test_reference_matches_transformers(tiny):
    name, model, folder = tiny
    ids = _ids(300, 7)
    llm = pyruntime.LLM(folder, dtype="float32", kv_dtype="float32", progress=False)
    ref = TorchReference(llm.engine.spec, llm.max_seq_len, torch.float32, int8_activations=False)
    assert (ref.prefill(torch.tensor(ids), 0, 0, all_logits=True) - _want(model, ids)).abs().max().item() < 1e-4


def test_bfloat16_cache_token_by_token(tiny):
    # K and V rounded to bfloat16 move the logits by ~2e-3; a key attended outside its window
    # (or one missed) moves them by ~1.
    name, model, folder = tiny
    ids = _ids(300, 8)
    llm = pyruntime.LLM(folder, dtype="float32", kv_dtype="bfloat16", progress=False)
    got = _token_by_token(llm.engine, ids, 100)
    assert (got - _want(model, ids)[99:]).abs().max().item() < 1e-2


def _greedy(model, ids, n):
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                         pad_token_id=0, min_new_tokens=n)
    return out[0, len(ids):].tolist()


def test_greedy_decode_matches_transformers(tiny):
    # A prompt past phi3-longrope's original length: transformers then keeps to the long factors.
    name, model, folder = tiny
    llm = pyruntime.LLM(folder, dtype="float32", kv_dtype="float32", progress=False)
    ids = _ids(40, 1)
    got = llm.generate(ids, max_new_tokens=32, ignore_eos=True)
    assert got.token_ids == _greedy(model, ids, 32)


def test_batch_equals_each_alone_and_cache_continuation_equals_fresh(tiny):
    name, model, folder = tiny
    llm = pyruntime.LLM(folder, dtype="float32", kv_dtype="float32", progress=False)
    prompts = [_ids(7, 2), _ids(40, 3), _ids(19, 4)]
    together = llm.generate(prompts, max_new_tokens=12, ignore_eos=True, logprobs=1)
    for p, b in zip(prompts, together):
        a = llm.generate(p, max_new_tokens=12, ignore_eos=True, logprobs=1)
        assert a.token_ids == b.token_ids
        assert [x.logprob for x in a.logprobs] == [x.logprob for x in b.logprobs]
    # A continuation of the last run's prompt and answer: its prefix comes from the cache.
    follow = prompts[2] + a.token_ids + _ids(9, 5)
    warm = llm.generate(follow, max_new_tokens=12, ignore_eos=True)
    assert warm.stats.cached_prompt_tokens >= len(prompts[2])
    fresh = pyruntime.LLM(folder, dtype="float32", kv_dtype="float32", progress=False)
    cold = fresh.generate(follow, max_new_tokens=12, ignore_eos=True)
    assert cold.stats.cached_prompt_tokens == 0
    assert warm.token_ids == cold.token_ids


def _rings(llm) -> list[int]:
    """The sliding layers' ring sizes (each less than max_seq_len: a real ring)."""
    rings = [s for s, layer in zip(llm.engine.layer_slots, llm.engine.spec.layers) if layer.sliding_window]
    assert rings and all(s < llm.max_seq_len for s in rings)
    return rings


@pytest.mark.parametrize("max_seq_len", [None, 333])  # key tiles; rows (a ring of 320 only where W <= 65)
def test_ring_cache_wraps_and_matches_transformers(windowed, max_seq_len):
    # Sequences longer than every ring (320 or 384 positions for these windows and 256-token
    # chunks): a prompt chunk and decode steps write over the ring's oldest keys, and attend
    # windows that run across its end.
    name, model, folder = windowed
    llm = pyruntime.LLM(folder, dtype="float32", kv_dtype="float32", max_seq_len=max_seq_len, progress=False)
    if max_seq_len == 333 and name == "mistral-sliding-window":
        assert llm.engine.layer_slots == [333, 333]  # a ring of 384 would not be smaller
        return
    rings = _rings(llm)
    n = llm.max_seq_len
    assert n > max(rings)
    ids = _ids(n, 9)
    want = _want(model, ids)
    assert (llm.logits(ids) - want).abs().max().item() < 1e-4
    got = _token_by_token(llm.engine, ids, 20)
    assert (got - want[19:]).abs().max().item() < 1e-4
    # K and V of float32 for the slots each layer keeps: fewer than max_seq_len on every layer.
    c = llm.config
    assert llm.kv_cache_bytes == 2 * 4 * c.num_kv_heads * c.head_dim * sum(llm.engine.layer_slots)
    assert sum(llm.engine.layer_slots) < c.num_layers * n


def test_ring_cache_public_layout(windowed):
    # kv(layer) of a ring layer: position p at [:, :, p % S], the last S positions written,
    # against a cache that keeps every position (TorchReference's).
    name, model, folder = windowed
    llm = pyruntime.LLM(folder, dtype="float32", kv_dtype="float32", progress=False)
    ids = _ids(450, 10)
    llm.logits(ids)
    ref = TorchReference(llm.engine.spec, llm.max_seq_len, torch.float32, int8_activations=False)
    ref.prefill(torch.tensor(ids), 0, 0)
    for layer, s in enumerate(llm.engine.layer_slots):
        k, v = llm.engine.kv(layer)
        rk, rv = ref.kv(layer)
        last = torch.arange(len(ids) - min(s, len(ids)), len(ids))
        assert k.shape[2] == s
        assert torch.allclose(k[0, :, last % s], rk[0, :, last], atol=1e-5)
        assert torch.allclose(v[0, :, last % s], rv[0, :, last], atol=1e-5)


def test_ring_cache_prompt_reuse(windowed):
    # A continuation past the ring reuses the cache; a prompt sharing only an early prefix of
    # a sequence longer than the ring does not (its keys were overwritten): both equal a fresh run.
    name, model, folder = windowed
    llm = pyruntime.LLM(folder, dtype="float32", kv_dtype="float32", progress=False)
    fresh = pyruntime.LLM(folder, dtype="float32", kv_dtype="float32", progress=False)
    rings = _rings(llm)
    first = _ids(max(rings) + 40, 11)
    a = llm.generate(first, max_new_tokens=10, ignore_eos=True)
    follow = first + a.token_ids + _ids(7, 12)
    warm = llm.generate(follow, max_new_tokens=10, ignore_eos=True)
    assert warm.stats.cached_prompt_tokens == len(first) + 9  # the last answer token's K/V were not written
    fresh.logits([1])  # forgets its cache
    assert warm.token_ids == fresh.generate(follow, max_new_tokens=10, ignore_eos=True).token_ids
    branch = first[:30] + _ids(5, 13)
    again = llm.generate(branch, max_new_tokens=10, ignore_eos=True)
    assert again.stats.cached_prompt_tokens == 0
    fresh.logits([1])
    assert again.token_ids == fresh.generate(branch, max_new_tokens=10, ignore_eos=True).token_ids
