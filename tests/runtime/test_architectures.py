"""Tiny random-weight models of every supported architecture, built from transformers'
config classes and saved with save_pretrained: pyruntime's logits against transformers'."""

import shutil

import pytest
import torch

import pyruntime

transformers = pytest.importorskip("transformers")

COMMON = dict(vocab_size=49152, hidden_size=128, intermediate_size=200, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5)

ARCHS = {
    "llama": lambda: transformers.LlamaConfig(**COMMON, tie_word_embeddings=True),
    "llama-untied-mha": lambda: transformers.LlamaConfig(**{**COMMON, "num_key_value_heads": 4}, tie_word_embeddings=False),
    "llama3-rope-scaling": lambda: transformers.LlamaConfig(
        **COMMON, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64}),
    "llama-linear-rope": lambda: transformers.LlamaConfig(**COMMON, rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "llama-attention-bias": lambda: transformers.LlamaConfig(**COMMON, attention_bias=True),
    "mistral": lambda: transformers.MistralConfig(**COMMON, sliding_window=None, head_dim=32),
    "qwen2": lambda: transformers.Qwen2Config(**COMMON, tie_word_embeddings=True),
    "phi3": lambda: transformers.Phi3Config(**COMMON, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "head-dim-64": lambda: transformers.LlamaConfig(**{**COMMON, "num_attention_heads": 2, "num_key_value_heads": 1}),
}


def _model_class(cfg):
    return transformers.AutoModelForCausalLM.from_config(cfg)


@pytest.fixture(scope="module", params=sorted(ARCHS))
def tiny(request, tmp_path_factory, llm):
    torch.manual_seed(0)
    cfg = ARCHS[request.param]()
    model = _model_class(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.normal_(1.0 if "norm" in name else 0.0, 0.2)
    folder = tmp_path_factory.mktemp(request.param)
    shard = "300KB" if request.param == "llama" else "10GB"  # one sharded checkpoint
    model.save_pretrained(folder, max_shard_size=shard)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(llm.path / f, folder / f)
    return request.param, model, folder


def test_logits_match_transformers(tiny):
    name, model, folder = tiny
    if name == "llama":
        assert (folder / "model.safetensors.index.json").exists()
    llm = pyruntime.LLM(folder, progress=False)
    ids = [5, 900, 17, 4000, 33, 12, 7, 49000, 1, 2, 3, 250] * 3
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0]
    got = llm.logits(ids)
    assert (got - want).abs().max().item() < 1e-4


def test_greedy_decode_matches_transformers(tiny):
    name, model, folder = tiny
    llm = pyruntime.LLM(folder, progress=False)
    ids = [5, 900, 17, 4000, 33]
    out = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False, eos_token_id=None,
                         pad_token_id=0, min_new_tokens=20)
    got = llm.generate(ids, max_new_tokens=20)
    want = out[0, len(ids):].tolist()
    # Decode with the KV cache must follow transformers up to the first EOS pyruntime honours.
    n = len(got.token_ids)
    assert got.token_ids == want[:n]
