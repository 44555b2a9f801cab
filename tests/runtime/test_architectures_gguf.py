"""The tiny models of test_architectures written as GGUF files the way llama.cpp's converter writes
them (its tensor names from the gguf package's table, q and k rows interleaved for the `llama`
architecture, Gemma's norms as 1 + w, RoPE scaling as metadata or as factor tensors, sliding
windows per layer), in float32 and in Q8_0: pyruntime's logits on the file against transformers'
on the same weights (for Q8_0, transformers given the dequantized matrices), over 300 tokens."""

import functools
import math

import numpy as np
import pytest
import torch

import pyruntime
from tests.runtime.test_architectures import ARCHS, _ids, tiny  # noqa: F401  (the fixture)

gguf = pytest.importorskip("gguf")

@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """The converted folders of these throwaway files go to the test's own directory."""
    monkeypatch.setenv("PYRUNTIME_CACHE", str(tmp_path / "cache"))


# Hugging Face architecture -> GGUF architecture (Mistral's files are `llama`).
GGUF_ARCH = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
             "Qwen3ForCausalLM": "qwen3", "Phi3ForCausalLM": "phi3", "Gemma2ForCausalLM": "gemma2",
             "Gemma3ForCausalLM": "gemma3"}
# Families whose configuration GGUF metadata cannot carry as transformers reads it.
NOT_IN_GGUF = {"llama-dynamic-rope": "dynamic RoPE has no GGUF form (it changes nothing within the context anyway)"}


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's interleaving of q / k rows for the `llama` architecture."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_factors(rope: dict, dim: int) -> np.ndarray:
    """llama.cpp's rope_freqs of a llama3-scaled RoPE: a factor per frequency."""
    base, factor = rope["rope_theta"], rope["factor"]
    low, high, old = rope["low_freq_factor"], rope["high_freq_factor"], rope["original_max_position_embeddings"]
    out = []
    for freq in 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


@functools.cache
def _tokenizer_fields(path: str) -> dict:
    f = gguf.GGUFReader(path).fields
    return {k: f[k].contents() for k in f if k.startswith("tokenizer.ggml.")}


def write_gguf(model, path, tokenizer_file, qtype, pre: str | None = None) -> dict:
    """Writes model as llama.cpp would; returns the state dict transformers should see (the
    matrices stored as qtype replaced by their dequantized values)."""
    cfg = model.config
    arch = GGUF_ARCH[type(model).__name__]
    gemma = arch.startswith("gemma")
    layers, hidden, heads, kv_heads = cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    rope = dict(cfg.rope_parameters.get("full_attention", cfg.rope_parameters)) if gemma and arch == "gemma3" else dict(cfg.rope_parameters)
    rot = int(head_dim * rope.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", 1.0) or 1.0))
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_rope_dimension_count(rot)
    types = getattr(cfg, "layer_types", None)
    if getattr(cfg, "sliding_window", None) and (types is None or "sliding_attention" in types):
        w.add_sliding_window(cfg.sliding_window)  # every layer's (Mistral, Phi-3), or as the pattern says
        if types is not None:
            w.add_sliding_window_pattern([t == "sliding_attention" for t in types])
    if gemma:
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if getattr(cfg, key, None):
                getattr(w, f"add_{key}")(getattr(cfg, key))
        w.add_attention_scale(cfg.query_pre_attn_scalar ** -0.5)
        if arch == "gemma3":
            w.add_rope_freq_base_swa(cfg.rope_parameters["sliding_attention"]["rope_theta"])
    extra = {}  # RoPE factor tensors
    kind = rope.get("rope_type", "default")
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rope["factor"])
        w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    elif kind == "llama3":
        extra["rope_freqs.weight"] = _llama3_factors(rope, rot)
    elif kind == "longrope":
        orig = cfg.original_max_position_embeddings
        extra["rope_factors_long.weight"] = np.array(rope["long_factor"], dtype=np.float32)
        extra["rope_factors_short.weight"] = np.array(rope["short_factor"], dtype=np.float32)
        scale = cfg.max_position_embeddings / orig
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(orig)))
        w.add_rope_scaling_orig_ctx_len(orig)
    # The bundled model's tokenizer (the tiny models share its vocabulary).
    f = _tokenizer_fields(str(tokenizer_file))
    w.add_tokenizer_model(f["tokenizer.ggml.model"])
    w.add_tokenizer_pre(pre or f["tokenizer.ggml.pre"])
    w.add_token_list(f["tokenizer.ggml.tokens"])
    w.add_token_types(f["tokenizer.ggml.token_type"])
    w.add_token_merges(f["tokenizer.ggml.merges"])
    w.add_bos_token_id(int(f["tokenizer.ggml.bos_token_id"]))
    w.add_eos_token_id(int(f["tokenizer.ggml.eos_token_id"]))

    names = gguf.get_tensor_name_map({n: a for a, n in gguf.MODEL_ARCH_NAMES.items()}[arch], layers)
    seen = {}
    for hf, t in model.state_dict().items():
        if hf == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        a = t.detach().float().numpy().copy()
        if gemma and hf.endswith("norm.weight"):
            a = a + 1.0
        if arch == "llama" and hf.endswith("q_proj.weight"):
            a = _permute(a, heads)
        elif arch == "llama" and hf.endswith("k_proj.weight"):
            a = _permute(a, kv_heads)
        name = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        assert name, hf
        if a.ndim == 2 and a.shape[1] % 32 == 0 and qtype != gguf.GGMLQuantizationType.F32:
            q = gguf.quants.quantize(a, qtype)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)
            seen[hf] = gguf.quants.dequantize(q, qtype).reshape(a.shape)  # in the file's row order
        else:
            w.add_tensor(name, a)
    for name, a in extra.items():
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return seen


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
def test_gguf_twin_matches_transformers(tiny, tmp_path, llm, qtype):  # noqa: F811
    name, model, folder = tiny
    if name in NOT_IN_GGUF:
        pytest.skip(NOT_IN_GGUF[name])
    qt = getattr(gguf.GGMLQuantizationType, qtype)
    path = tmp_path / f"{name}.{qtype}.gguf"
    quantized = write_gguf(model, path, llm.path / "model.gguf", qt)
    ref = type(model)(model.config).eval()
    state = model.state_dict()
    arch = GGUF_ARCH[type(model).__name__]
    for hf, deq in quantized.items():
        if arch == "llama" and hf.endswith(("q_proj.weight", "k_proj.weight")):
            heads = model.config.num_attention_heads if "q_proj" in hf else model.config.num_key_value_heads
            deq = _unpermute(deq, heads)
        state[hf] = torch.from_numpy(np.ascontiguousarray(deq))
    if model.config.tie_word_embeddings:  # the tied head is the embedding: one tensor, loaded last
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    ref.load_state_dict(state)
    ids = _ids(300, 9)
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0]
    got_llm = pyruntime.LLM(path, kv_dtype="float32", int8_activations=False, prompt_bits=32, progress=False)
    assert got_llm.config.architecture == {"llama": "LlamaForCausalLM"}.get(arch, type(model).__name__)
    got = got_llm.logits(ids)
    assert (got - want).abs().max().item() < 1e-4


@pytest.mark.parametrize("text", ["Order 12345 costs $678.90", "Hello world!\n\n  indented", "unseen wörds ✓ 漢字"])
def test_qwen2_pre_tokenizer_matches_transformers(tmp_path, llm, text):
    # A qwen2 file naming Qwen2's pre-tokenizer (digits one at a time), read by transformers too.
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(ARCHS["qwen2"]()).eval()
    path = tmp_path / "qwen2.gguf"
    write_gguf(model, path, llm.path / "model.gguf", gguf.GGMLQuantizationType.F32, pre="qwen2")
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    ours = pyruntime.LLM(path, progress=False).tokenizer
    ids = ours.encode(text)
    assert ids == ref(text, add_special_tokens=False).input_ids
    assert ours.decode(ids) == ref.decode(ids)
    # The split itself (this vocabulary has no multi-digit tokens to tell the regexes apart by).
    pieces = [p for p, _ in ref.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)]
    assert [p for p, _ in ours._tok.pre_tokenizer.pre_tokenize_str(text)] == pieces


def test_hf_names_round_trip(tiny, tmp_path, llm):  # noqa: F811
    """The one map of Hugging Face names to roles (weights.hf_layer, here through the GGUF loader)
    and its inverse (convert._hf_tensors, which `pyruntime convert --dequantize` writes): every
    tensor of the family's checkpoint comes back under its own name with its values."""
    from pyruntime.config import ModelConfig
    from pyruntime.convert import _hf_tensors
    from pyruntime.gguf_weights import load_gguf_weights

    name, model, folder = tiny
    if name in NOT_IN_GGUF:
        pytest.skip(NOT_IN_GGUF[name])
    path = tmp_path / f"{name}.gguf"
    write_gguf(model, path, llm.path / "model.gguf", gguf.GGMLQuantizationType.F32)
    cfg = ModelConfig.from_file(folder / "config.json")
    got = _hf_tensors(cfg, load_gguf_weights(path, cfg, torch.float32, progress=False))
    want = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        want.pop("lm_head.weight")
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        torch.testing.assert_close(got[k], w.float(), rtol=0, atol=1e-6, msg=k)
