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
from tqdm import tqdm

from pyruntime.errors import ModelLoadError

# The pre-tokenizer regex llama.cpp names "llama-bpe" (Llama 3).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
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


def _reverse_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undoes llama.cpp's interleaving of q/k rows back to Hugging Face's rotate-half order."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_name(name: str) -> str | None:
    fixed = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    if name in fixed:
        return fixed[name]
    parts = name.split(".")
    if len(parts) != 4 or parts[0] != "blk" or parts[3] != "weight":
        return None
    layer = {
        "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }.get(parts[2])
    return None if layer is None else f"model.layers.{parts[1]}.{layer}.weight"


def _config(meta: _Meta, has_output: bool, vocab: int) -> dict:
    arch = meta.get("general.architecture", required=True)
    if arch != "llama":
        raise ModelLoadError(f"{meta._path}: GGUF architecture {arch!r} is not supported by convert (supported: llama)")
    p = "llama."
    hidden = int(meta.get(p + "embedding_length", required=True))
    heads = int(meta.get(p + "attention.head_count", required=True))
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(meta.get(p + "feed_forward_length", required=True)),
        "num_hidden_layers": int(meta.get(p + "block_count", required=True)),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta.get(p + "attention.head_count_kv", heads)),
        "head_dim": int(meta.get(p + "attention.key_length", hidden // heads)),
        "rms_norm_eps": float(meta.get(p + "attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(meta.get(p + "rope.freq_base", 10000.0)),
        "max_position_embeddings": int(meta.get(p + "context_length", 2048)),
        "vocab_size": vocab,
        "tie_word_embeddings": not has_output,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }
    scaling = meta.get(p + "rope.scaling.type")
    if scaling == "linear":
        cfg["rope_scaling"] = {"type": "linear", "factor": float(meta.get(p + "rope.scaling.factor", 1.0))}
    elif scaling not in (None, "none"):
        raise ModelLoadError(f"{meta._path}: rope scaling {scaling!r} is not supported by convert")
    for key, name in (("tokenizer.ggml.bos_token_id", "bos_token_id"), ("tokenizer.ggml.eos_token_id", "eos_token_id")):
        v = meta.get(key)
        if v is not None:
            cfg[name] = int(v)
    return cfg


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
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1, right=0)])
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
    elif pre == "llama-bpe":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ])
    elif pre in ("default", "gpt-2", "gpt2"):
        tok.pre_tokenizer = byte_level
    else:
        raise ModelLoadError(f"{meta._path}: GGUF pre-tokenizer {pre!r} is not supported by convert (smollm, llama-bpe, gpt-2)")
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
        "model_max_length": int(meta.get("llama.context_length", 2048)),
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
    from gguf.quants import dequantize

    from pyruntime.gguf_weights import open_gguf

    reader = open_gguf(gguf_path)
    meta = _Meta(reader, gguf_path)
    names = {t.name for t in reader.tensors}
    tokens = meta.get("tokenizer.ggml.tokens", required=True)
    cfg = _config(meta, "output.weight" in names, len(tokens))
    tokenizer, tok_cfg = _tokenizer(meta)

    tensors = {}
    for t in tqdm(reader.tensors if dequantize_tensors else [], desc=f"converting {gguf_path.name}", unit="tensor", disable=not progress, leave=False):
        hf = _hf_name(t.name)
        if hf is None:
            raise ModelLoadError(f"{gguf_path}: tensor {t.name!r} is not supported by convert")
        try:
            w = dequantize(t.data, t.tensor_type)
        except (NotImplementedError, ValueError, KeyError) as e:
            raise ModelLoadError(f"{gguf_path}: tensor {t.name!r} has quantisation {t.tensor_type!r} that cannot be read ({e})") from None
        shape = tuple(int(x) for x in reversed(t.shape))
        w = np.asarray(w, dtype=np.float32).reshape(shape)
        if t.name.endswith("attn_q.weight"):
            w = _reverse_permute(w, cfg["num_attention_heads"])
        elif t.name.endswith("attn_k.weight"):
            w = _reverse_permute(w, cfg["num_key_value_heads"])
        tensors[hf] = torch.from_numpy(np.array(w, dtype=np.float32, order="C", copy=True))

    return cfg, tokenizer, tok_cfg, tensors


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, progress: bool = True, dequantize: bool = False,
                 link: bool = False) -> Path:
    """Writes a Hugging Face style folder for a Llama-family GGUF file; returns out_dir. The
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
