"""Weights from safetensors (single or sharded), memory-mapped, checked and converted once.

Hugging Face tensor names are mapped onto the runtime's roles (pyruntime.spec turns them into
the model description): per layer q, k, v, o, gate, up, down (Phi-3's fused qkv_proj and
gate_up_proj split into row views, no copy), the q, k, v biases as one vector, Qwen3's and Gemma
3's q_norm / k_norm, Gemma's four norms per layer. Norm weights are float32, with Gemma's
`x * (1 + w)` folded in (1 + w stored).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from tqdm import tqdm

from pyruntime.config import ModelConfig
from pyruntime.errors import ModelLoadError


@dataclass
class LayerWeights:
    attn_norm: torch.Tensor  # [H]
    q: torch.Tensor  # [Hq * D, H]
    k: torch.Tensor  # [Hkv * D, H]
    v: torch.Tensor  # [Hkv * D, H]
    qkv_bias: torch.Tensor | None  # [(Hq + 2 Hkv) * D]: q's, k's, v's
    o: torch.Tensor  # [H, Hq * D]
    o_bias: torch.Tensor | None  # [H]
    mlp_norm: torch.Tensor  # [H]
    gate: torch.Tensor  # [I, H]
    up: torch.Tensor  # [I, H]
    down: torch.Tensor  # [H, I]
    q_norm: torch.Tensor | None = None  # [D]: RMSNorm of every q head before RoPE (qk-norm)
    k_norm: torch.Tensor | None = None  # [D]: of every k head
    post_attn_norm: torch.Tensor | None = None  # [H]: of the attention's output (Gemma)
    post_mlp_norm: torch.Tensor | None = None  # [H]: of the MLP's output (Gemma)


@dataclass
class ModelWeights:
    embed: torch.Tensor  # [V, H]
    layers: list[LayerWeights]
    final_norm: torch.Tensor  # [H]
    lm_head: torch.Tensor  # [V, H] (the embedding itself when tied)


class _TensorSource:
    """Name -> tensor over one or several safetensors files, opened memory-mapped."""

    def __init__(self, folder: Path):
        index = folder / "model.safetensors.index.json"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
                    raise TypeError("weight_map is not an object of file names")
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ModelLoadError(f"{index}: not a valid safetensors index ({e})") from None
            shards = [folder / f for f in sorted(set(weight_map.values()))]
            self._source = index  # what a missing tensor's message names
        else:
            shards = [folder / "model.safetensors"]
            if not shards[0].exists():
                raise ModelLoadError(f"{folder}: no model.safetensors or model.safetensors.index.json")
            self._source = shards[0]
        self._handles = {}
        self._where = {}
        for f in shards:
            if not f.exists():
                raise ModelLoadError(f"{f}: safetensors shard not found")
            try:
                h = safe_open(str(f), framework="pt")
                keys = list(h.keys())
            except (SafetensorError, OSError, ValueError, RuntimeError) as e:
                raise ModelLoadError(f"{f}: not a valid safetensors file ({e})") from None
            self._handles[f] = h
            for k in keys:
                self._where[k] = f

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        f = self._where.get(name)
        if f is None:
            raise ModelLoadError(f"{self._source}: tensor {name!r} is missing")
        try:
            t = self._handles[f].get_tensor(name)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ModelLoadError(f"{f}: tensor {name!r} cannot be read ({e})") from None
        if tuple(t.shape) != tuple(shape):
            raise ModelLoadError(f"{f}: tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        if not t.is_floating_point():
            raise ModelLoadError(f"{f}: tensor {name!r} has dtype {t.dtype}, expected a floating point type")
        return t


def hf_layer(cfg: ModelConfig, i: int, matrix, norm, bias, rows) -> LayerWeights:
    """Layer i from its tensors' Hugging Face names (the one map of names to roles, for
    safetensors and GGUF alike): matrix(name, shape, heads) reads a matrix (heads: its head count
    where it is q or k, whose rows a GGUF file may hold interleaved), norm(name, size) and
    bias(name, size) a vector, rows(m, r0, r1) is a view of rows [r0, r1) of a matrix read."""
    H, I, q, kv = cfg.hidden_size, cfg.intermediate_size, cfg.q_size, cfg.kv_size
    p = f"model.layers.{i}."
    if cfg.architecture == "Phi3ForCausalLM":  # fused q, k, v and gate, up
        qkv = matrix(p + "self_attn.qkv_proj.weight", (q + 2 * kv, H))
        wq, wk, wv = rows(qkv, 0, q), rows(qkv, q, q + kv), rows(qkv, q + kv, q + 2 * kv)
        gate_up = matrix(p + "mlp.gate_up_proj.weight", (2 * I, H))
        gate, up = rows(gate_up, 0, I), rows(gate_up, I, 2 * I)
    else:
        wq = matrix(p + "self_attn.q_proj.weight", (q, H), cfg.num_heads)
        wk = matrix(p + "self_attn.k_proj.weight", (kv, H), cfg.num_kv_heads)
        wv = matrix(p + "self_attn.v_proj.weight", (kv, H))
        gate, up = matrix(p + "mlp.gate_proj.weight", (I, H)), matrix(p + "mlp.up_proj.weight", (I, H))
    qkv_bias = None
    if cfg.attention_bias:
        qkv_bias = torch.cat([bias(p + f"self_attn.{n}_proj.bias", s) for n, s in (("q", q), ("k", kv), ("v", kv))])
    gemma = cfg.post_norms
    return LayerWeights(
        attn_norm=norm(p + "input_layernorm.weight", H),
        q=wq, k=wk, v=wv, qkv_bias=qkv_bias,
        o=matrix(p + "self_attn.o_proj.weight", (H, q)),
        o_bias=bias(p + "self_attn.o_proj.bias", H) if cfg.o_bias else None,
        # Gemma's post_attention_layernorm norms the attention's output; its MLP's input norm is
        # pre_feedforward_layernorm.
        mlp_norm=norm(p + ("pre_feedforward_layernorm" if gemma else "post_attention_layernorm") + ".weight", H),
        gate=gate, up=up,
        down=matrix(p + "mlp.down_proj.weight", (H, I)),
        q_norm=norm(p + "self_attn.q_norm.weight", cfg.head_dim) if cfg.qk_norm else None,
        k_norm=norm(p + "self_attn.k_norm.weight", cfg.head_dim) if cfg.qk_norm else None,
        post_attn_norm=norm(p + "post_attention_layernorm.weight", H) if gemma else None,
        post_mlp_norm=norm(p + "post_feedforward_layernorm.weight", H) if gemma else None,
    )


def load_weights(folder: Path, cfg: ModelConfig, dtype: torch.dtype | None, progress: bool = True) -> ModelWeights:
    """Reads, checks and converts every tensor of the checkpoint in `folder` to `dtype`. A folder
    whose weights are a GGUF file (model.gguf, pyruntime.convert) is read by
    pyruntime.gguf_weights: dtype None keeps each matrix in the file's type."""
    from pyruntime import models

    gguf_file = models.gguf_weights(Path(folder))
    if gguf_file is not None:
        from pyruntime.gguf_weights import load_gguf_weights

        return load_gguf_weights(gguf_file, cfg, dtype, progress=progress)
    if dtype is None:
        raise ValueError(f"{folder}: keeping the weights' file types needs a GGUF model; this folder holds safetensors")
    src = _TensorSource(Path(folder))
    H, V = cfg.hidden_size, cfg.vocab_size

    def load(name, shape):
        return src.get(name, shape).to(dtype).contiguous()

    def norm(name, shape):
        return (src.get(name, shape).float() + cfg.norm_weight_offset).contiguous()

    embed = load("model.embed_tokens.weight", (V, H))
    layers = [hf_layer(cfg, i, matrix=lambda name, shape, heads=0: load(name, shape),
                       norm=lambda name, size: norm(name, (size,)), bias=lambda name, size: load(name, (size,)),
                       rows=lambda m, r0, r1: m[r0:r1])
              for i in tqdm(range(cfg.num_layers), desc="loading weights", unit="layer", disable=not progress, leave=False)]
    final_norm = norm("model.norm.weight", (H,))
    if cfg.tie_word_embeddings or "lm_head.weight" not in src:
        if not cfg.tie_word_embeddings:
            raise ModelLoadError(f"{folder}: tensor 'lm_head.weight' is missing (and tie_word_embeddings is false)")
        lm_head = embed
    else:
        lm_head = load("lm_head.weight", (V, H))
    return ModelWeights(embed=embed, layers=layers, final_norm=final_norm, lm_head=lm_head)
