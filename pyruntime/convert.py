"""GGUF -> Hugging Face style folder: config.json, tokenizer.json and tokenizer_config.json (with
the chat templates) rebuilt from the GGUF metadata, generation_config.json, and the weights:
the GGUF file itself as model.gguf (linked or copied; pyruntime reads its tensors in their own
types, pyruntime.gguf_weights), or with dequantize=True a float32 model.safetensors. The `gguf`
package reads the file."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from pyruntime.errors import ModelLoadError

# The pre-tokenizer regex llama.cpp names "llama-bpe" (Llama 3).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2's: as Llama 3's, with digits one at a time.
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
_TOKEN_CONTROL, _TOKEN_USER_DEFINED = 3, 4


class _Meta:
    def __init__(self, reader, path):
        self._fields = reader.fields
        self._path = path

    def keys(self):
        return self._fields.keys()

    def get(self, key, default=None, required=False):
        f = self._fields.get(key)
        if f is None:
            if required:
                raise ModelLoadError(f"{self._path}: GGUF metadata {key!r} is missing")
            return default
        try:
            return f.contents()
        except Exception as e:  # a corrupt field
            raise ModelLoadError(f"{self._path}: GGUF metadata {key!r} cannot be read ({e})") from None


# GGUF architecture -> the Hugging Face architecture it converts to. Mistral's files are `llama`.
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                 "phi3": "Phi3ForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM"}
# Layers of the 27B Gemma 2 and Gemma 3, whose query_pre_attn_scalar is hidden / heads (llama.cpp
# tells them by their layer count too; GGUF files do not carry the scalar).
_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}


def _config(meta: _Meta, tensors: dict, vocab: int) -> dict:
    """config.json of a GGUF file's metadata, in transformers' terms (what pyruntime.config reads)."""
    arch = meta.get("general.architecture", required=True)
    if arch not in ARCHITECTURES:
        raise ModelLoadError(f"{meta._path}: GGUF architecture {arch!r} is not supported by convert "
                             f"(supported: {', '.join(ARCHITECTURES)})")
    p = arch + "."
    hidden = int(meta.get(p + "embedding_length", required=True))
    heads = int(meta.get(p + "attention.head_count", required=True))
    layers = int(meta.get(p + "block_count", required=True))
    head_dim = int(meta.get(p + "attention.key_length", hidden // heads))
    gemma = arch.startswith("gemma")
    cfg = {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": arch,
        "hidden_size": hidden,
        "intermediate_size": int(meta.get(p + "feed_forward_length", required=True)),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta.get(p + "attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "rms_norm_eps": float(meta.get(p + "attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(meta.get(p + "rope.freq_base", 10000.0)),
        "max_position_embeddings": int(meta.get(p + "context_length", 2048)),
        "vocab_size": vocab,
        "tie_word_embeddings": "output.weight" not in tensors,
        "hidden_activation" if gemma else "hidden_act": "gelu_pytorch_tanh" if gemma else "silu",
        "torch_dtype": "float32",
    }
    rot = meta.get(p + "rope.dimension_count")
    if rot is not None and int(rot) != head_dim:
        cfg["partial_rotary_factor"] = int(rot) / head_dim
    window = meta.get(p + "attention.sliding_window")
    if window:
        cfg["sliding_window"] = int(window)
        pattern = meta.get(p + "attention.sliding_window_pattern")
        if isinstance(pattern, list):  # per layer: true where the layer slides
            sliding = [bool(x) for x in pattern]
        else:  # every Nth layer full (llama.cpp's defaults: Gemma 2 every 2nd, Gemma 3 every 6th), else none
            n = int(pattern) if pattern is not None else {"gemma2": 2, "gemma3": 6}.get(arch, 0)
            sliding = [n == 0 or (i + 1) % n != 0 for i in range(layers)]
        cfg["layer_types"] = ["sliding_attention" if x else "full_attention" for x in sliding]
    if arch == "llama" and "blk.0.attn_q.bias" in tensors:
        cfg["attention_bias"] = True
    if gemma:
        scale = meta.get(p + "attention.scale")
        cfg["query_pre_attn_scalar"] = (
            1.0 / float(scale) ** 2 if scale else hidden / heads if layers == _GEMMA_27B_LAYERS[arch] else head_dim)
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if meta.get(p + key) is not None:
                cfg[key] = float(meta.get(p + key))
        if arch == "gemma3":
            cfg["rope_local_base_freq"] = float(meta.get(p + "rope.freq_base_swa", 10000.0))
    scaling = meta.get(p + "rope.scaling.type")
    factor = float(meta.get(p + "rope.scaling.factor", 1.0))
    original = meta.get(p + "rope.scaling.original_context_length")
    if scaling == "linear":
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": factor}
    elif scaling == "yarn":
        cfg["rope_scaling"] = {"rope_type": "yarn", "factor": factor,
                               "original_max_position_embeddings": int(original or cfg["max_position_embeddings"])}
        for key, name in (("rope.scaling.yarn_beta_fast", "beta_fast"), ("rope.scaling.yarn_beta_slow", "beta_slow")):
            if meta.get(p + key) is not None:
                cfg["rope_scaling"][name] = float(meta.get(p + key))
    elif scaling not in (None, "none"):
        raise ModelLoadError(f"{meta._path}: rope scaling {scaling!r} is not supported by convert (linear, yarn)")
    if "rope_factors_long.weight" in tensors:  # Phi-3's longrope: the factors are tensors
        cfg["rope_scaling"] = {
            "rope_type": "longrope",
            "long_factor": _floats(tensors["rope_factors_long.weight"]),
            "short_factor": _floats(tensors.get("rope_factors_short.weight", tensors["rope_factors_long.weight"])),
        }
        if meta.get(p + "rope.scaling.attn_factor") is not None:
            cfg["rope_scaling"]["attention_factor"] = float(meta.get(p + "rope.scaling.attn_factor"))
        if original is not None:
            cfg["original_max_position_embeddings"] = int(original)
    elif "rope_freqs.weight" in tensors:  # Llama 3.1's scaling, written as a factor per frequency
        factors = _floats(tensors["rope_freqs.weight"])
        # inv_freq / factor for every position: longrope's form with one set of factors and no
        # attention factor.
        cfg["rope_scaling"] = {"rope_type": "longrope", "long_factor": factors, "short_factor": factors,
                               "attention_factor": 1.0, "original_max_position_embeddings": cfg["max_position_embeddings"]}
    for key, name in (("tokenizer.ggml.bos_token_id", "bos_token_id"), ("tokenizer.ggml.eos_token_id", "eos_token_id")):
        v = meta.get(key)
        if v is not None:
            cfg[name] = int(v)
    return cfg


def _floats(t) -> list[float]:
    """A small float32 tensor of the file (RoPE factors) as a list."""
    return [float(x) for x in np.asarray(t.data, dtype=np.float32).reshape(-1)]


def _spm_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """BPE merges implied by a sentencepiece vocabulary: every split of a token into two
    tokens, the merged token's score deciding the order (best first)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    found = []
    for token, score in zip(tokens, scores):
        pairs = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in vocab and token[i:] in vocab]
        pairs.sort(key=lambda p: (vocab[p[0]], vocab[p[1]]))
        found += [(score, left, right) for left, right in pairs]
    found.sort(key=lambda m: (m[0], len(m[1]), len(m[2])), reverse=True)
    return [(left, right) for _, left, right in found]


def _spm_tokenizer(meta: _Meta, tokens):
    """A sentencepiece (Llama 2 style) vocabulary as a byte-fallback BPE tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    scores = meta.get("tokenizer.ggml.scores", required=True)
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=_spm_merges(tokens, scores),
                     unk_token=tokens[int(unk)] if unk is not None else None, fuse_unk=True, byte_fallback=True)
    tok = Tokenizer(bpe)
    # sentencepiece's dummy prefix (a space before the text) unless the file says not (Gemma).
    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first" if prefix else "never",
                                                 split=False)
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(steps + ([decoders.Strip(content=" ", left=1, right=0)] if prefix else []))
    return tok


def _tokenizer(meta: _Meta):
    from tokenizers import AddedToken, processors

    kind = meta.get("tokenizer.ggml.model", required=True)
    if kind not in ("gpt2", "llama"):
        raise ModelLoadError(
            f"{meta._path}: GGUF tokenizer model {kind!r} is not supported by convert (supported: gpt2, llama)"
        )
    tokens = meta.get("tokenizer.ggml.tokens", required=True)
    types = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))
    if kind == "llama":
        tok = _spm_tokenizer(meta, tokens)
    else:
        tok = _bpe_tokenizer(meta, tokens)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == _TOKEN_CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == _TOKEN_USER_DEFINED])
    bos_id = meta.get("tokenizer.ggml.bos_token_id")
    # llama.cpp adds BOS to a sentencepiece vocabulary unless the file says otherwise.
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", kind == "llama")) and bos_id is not None
    steps = [processors.ByteLevel(trim_offsets=False)] if kind == "gpt2" else []
    if add_bos:
        bos = tokens[int(bos_id)]
        steps.append(processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                                   special_tokens=[(bos, int(bos_id))]))
    if steps:
        tok.post_processor = steps[0] if len(steps) == 1 else processors.Sequence(steps)
    return tok, _tokenizer_config(meta, tokens, add_bos)


def _bpe_tokenizer(meta: _Meta, tokens):
    """A byte-level BPE (GPT-2 style) vocabulary with the pre-tokenizer llama.cpp names."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    merges = meta.get("tokenizer.ggml.merges", required=True)
    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], fuse_unk=False, byte_fallback=False)
    tok = Tokenizer(bpe)
    pre = meta.get("tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in ("llama-bpe", "qwen2"):
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT if pre == "llama-bpe" else _QWEN2_SPLIT), behavior="isolated",
                                 invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ])
    elif pre in ("default", "gpt-2", "gpt2"):
        tok.pre_tokenizer = byte_level
    else:
        raise ModelLoadError(
            f"{meta._path}: GGUF pre-tokenizer {pre!r} is not supported by convert (smollm, llama-bpe, qwen2, gpt-2)")
    tok.decoder = decoders.ByteLevel()
    return tok


def _tokenizer_config(meta: _Meta, tokens, add_bos: bool) -> dict:
    def name(key):
        v = meta.get(key)
        return tokens[int(v)] if v is not None and 0 <= int(v) < len(tokens) else None

    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "bos_token": name("tokenizer.ggml.bos_token_id"),
        "eos_token": name("tokenizer.ggml.eos_token_id"),
        "unk_token": name("tokenizer.ggml.unknown_token_id"),
        "pad_token": name("tokenizer.ggml.padding_token_id"),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta.get(f"{meta.get('general.architecture')}.context_length", 2048)),
    }
    templates = _chat_templates(meta)
    if list(templates) == ["default"]:
        tok_cfg["chat_template"] = templates["default"]
    elif templates:  # named variants (tool_use, rag, ...): transformers' list form
        tok_cfg["chat_template"] = [{"name": k, "template": v} for k, v in templates.items()]
    return {k: v for k, v in tok_cfg.items() if v is not None}


def _chat_templates(meta: _Meta) -> dict[str, str]:
    """name -> template: tokenizer.chat_template is the default, tokenizer.chat_template.<name>
    the named ones (gguf's writer lists their names in tokenizer.chat_templates)."""
    prefix = "tokenizer.chat_template."
    templates = {"default": meta.get("tokenizer.chat_template")}
    for key in sorted(meta.keys()):
        if key.startswith(prefix):
            templates[key[len(prefix):]] = meta.get(key)
    return {k: v for k, v in templates.items() if isinstance(v, str) and v}


def _read_gguf(gguf_path: Path, progress: bool, dequantize_tensors: bool):
    """config, tokenizer, tokenizer config and (dequantize_tensors) float32 tensors (Hugging
    Face names) of a GGUF file."""
    from pyruntime.gguf_weights import open_gguf

    reader = open_gguf(gguf_path)
    meta = _Meta(reader, gguf_path)
    tokens = meta.get("tokenizer.ggml.tokens", required=True)
    cfg = _config(meta, {t.name: t for t in reader.tensors}, len(tokens))
    tokenizer, tok_cfg = _tokenizer(meta)
    tensors = {}
    if dequantize_tensors:
        from pyruntime.config import ModelConfig
        from pyruntime.gguf_weights import load_gguf_weights

        model_cfg = ModelConfig.from_dict(cfg, str(gguf_path))
        tensors = _hf_tensors(model_cfg, load_gguf_weights(gguf_path, model_cfg, torch.float32, progress=progress))
    return cfg, tokenizer, tok_cfg, tensors


def _hf_tensors(cfg, w) -> dict[str, torch.Tensor]:
    """The weights under their Hugging Face names, as transformers' model of cfg.architecture
    loads them (Phi-3's fused projections joined, Gemma's norms back to w of x * (1 + w))."""
    gemma = cfg.post_norms

    def norm(v):
        return v - 1.0 if gemma else v

    out = {"model.embed_tokens.weight": w.embed, "model.norm.weight": norm(w.final_norm)}
    if w.lm_head is not w.embed:
        out["lm_head.weight"] = w.lm_head
    for i, l in enumerate(w.layers):
        p = f"model.layers.{i}."
        if cfg.architecture == "Phi3ForCausalLM":
            out[p + "self_attn.qkv_proj.weight"] = torch.cat([l.q, l.k, l.v])
            out[p + "mlp.gate_up_proj.weight"] = torch.cat([l.gate, l.up])
        else:
            out.update({p + "self_attn.q_proj.weight": l.q, p + "self_attn.k_proj.weight": l.k,
                        p + "self_attn.v_proj.weight": l.v, p + "mlp.gate_proj.weight": l.gate,
                        p + "mlp.up_proj.weight": l.up})
        out[p + "self_attn.o_proj.weight"] = l.o
        out[p + "mlp.down_proj.weight"] = l.down
        out[p + "input_layernorm.weight"] = norm(l.attn_norm)
        if l.qkv_bias is not None:
            for name, b in zip("qkv", l.qkv_bias.split([cfg.q_size, cfg.kv_size, cfg.kv_size])):
                out[p + f"self_attn.{name}_proj.bias"] = b
        if l.o_bias is not None:
            out[p + "self_attn.o_proj.bias"] = l.o_bias
        if l.q_norm is not None:
            out[p + "self_attn.q_norm.weight"] = norm(l.q_norm)
            out[p + "self_attn.k_norm.weight"] = norm(l.k_norm)
        if gemma:
            out[p + "post_attention_layernorm.weight"] = norm(l.post_attn_norm)
            out[p + "pre_feedforward_layernorm.weight"] = norm(l.mlp_norm)
            out[p + "post_feedforward_layernorm.weight"] = norm(l.post_mlp_norm)
        else:
            out[p + "post_attention_layernorm.weight"] = l.mlp_norm
    return {k: v.contiguous().clone() for k, v in out.items()}


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, progress: bool = True, dequantize: bool = False,
                 link: bool = False) -> Path:
    """Writes a Hugging Face style folder for a GGUF file (architectures: ARCHITECTURES); returns out_dir. The
    weights: model.gguf, a copy of the file (link=True: a symbolic link to it), or with
    dequantize=True model.safetensors in float32."""
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise ModelLoadError(f"{gguf_path}: GGUF file not found")
    try:
        cfg, tokenizer, tok_cfg, tensors = _read_gguf(gguf_path, progress, dequantize)
    except ModelLoadError:
        raise
    except Exception as e:  # a damaged file surfaces as any of numpy's, struct's or gguf's errors
        raise ModelLoadError(f"{gguf_path}: not a readable GGUF file ({type(e).__name__}: {e})") from None

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        if dequantize:
            save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        elif link:
            (tmp / "model.gguf").symlink_to(gguf_path.resolve())
        else:
            shutil.copyfile(gguf_path, tmp / "model.gguf")
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False))
        gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id") if k in cfg}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
