"""The model description: built once from a checkpoint's config and weights, handed to whichever
engine runs the model (C.ModelSpec, csrc/torch/model_spec.h: architecture, sizes, RoPE table,
norm epsilon, per-layer attributes, every matrix in its weight format)."""

from __future__ import annotations

import torch

from pyruntime._ext import C
from pyruntime.config import ModelConfig, cos_sin_cache
from pyruntime.errors import ModelLoadError
from pyruntime.formats import Format
from pyruntime.weights import ModelWeights


def build_spec(cfg: ModelConfig, weights: ModelWeights, fmt: Format, max_seq_len: int,
               vector_dtype: torch.dtype = torch.float32, fuse: bool = False) -> C.ModelSpec:
    """Every matrix packed as `fmt` (one already stored, a C.WeightMatrix, kept as it is; a tied
    LM head shares the embedding's), norms and biases as vector_dtype on the weights' device,
    RoPE for positions [0, max_seq_len). fuse: q, k, v (and gate, up) packed as one tensor and
    described as its row blocks (the CUDA engine's kernels take them so; dense formats only)."""
    device = weights.embed.device
    packed: dict[int, C.WeightMatrix] = {}  # data_ptr -> the stored matrix (a tied LM head)

    def matrix(name: str, w) -> C.WeightMatrix:
        if isinstance(w, C.WeightMatrix):
            return w
        if w.data_ptr() not in packed:
            try:
                packed[w.data_ptr()] = fmt.pack(w)
            except ValueError as e:
                raise ModelLoadError(f"{name}: {e}") from None
        return packed[w.data_ptr()]

    if fuse and fmt.name not in ("float32", "bfloat16"):
        raise ValueError(f"build_spec(fuse=True) takes a dense format (float32, bfloat16), not {fmt.name}")

    def stacked(name: str, *ws) -> list[C.WeightMatrix]:
        if not fuse:
            return [matrix(f"{name}.{i}", w) for i, w in enumerate(ws)]
        whole = fmt.pack(torch.cat(ws))  # not cached: the joined tensor is a temporary
        bounds = torch.tensor([0] + [w.shape[0] for w in ws]).cumsum(0).tolist()
        return [C.WeightMatrix(whole.format, whole.data[a:b]) for a, b in zip(bounds, bounds[1:])]

    def vector(v):
        return None if v is None else v.to(device=device, dtype=vector_dtype).contiguous()

    layers = []
    # A window as long as the cache leaves every key in sight: the layer is described as full.
    windows = [w if w < max_seq_len else 0 for w in cfg.layer_windows or (0,) * cfg.num_layers]
    local_cos_sin = None  # the sliding layers' own RoPE (Gemma 3)
    if cfg.local_rope is not None and cfg.local_rope != cfg.rope:
        local_cos_sin = cos_sin_cache(cfg.local_rope, cfg.rotary_dim, max_seq_len).to(device)
    for i, l in enumerate(weights.layers):
        # Every matrix and vector of C.LayerSpec.fields from the LayerWeights field of its name;
        # q, k, v and gate, up stacked.
        fields = dict(zip(("q", "k", "v"), stacked(f"layers.{i}.qkv", l.q, l.k, l.v)))
        fields.update(zip(("gate", "up"), stacked(f"layers.{i}.gate_up", l.gate, l.up)))
        for name, kind in C.LayerSpec.fields.items():
            if kind == "matrix" and name not in fields:
                fields[name] = matrix(f"layers.{i}.{name}", getattr(l, name))
            elif kind in ("vector", "optional_vector"):
                fields[name] = vector(getattr(l, name))
        local = cfg.layer_windows and cfg.layer_windows[i]
        layers.append(C.LayerSpec(**fields, sliding_window=windows[i], rope_cos_sin=local_cos_sin if local else None))
    spec = C.ModelSpec(
        architecture=cfg.architecture, hidden=cfg.hidden_size, inter=cfg.intermediate_size,
        num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, vocab=cfg.vocab_size,
        norm_eps=cfg.rms_norm_eps, attn_scale=cfg.attn_scale or cfg.head_dim**-0.5,
        rope_cos_sin=cos_sin_cache(cfg.rope, cfg.rotary_dim, max_seq_len).to(device), rotary_dim=cfg.rotary_dim,
        rope_neox=True, embed=matrix("embed", weights.embed), layers=layers, final_norm=vector(weights.final_norm),
        lm_head=matrix("lm_head", weights.lm_head),
        # The model-wide features of some families (model_fields.h), from the config's fields of their names.
        **{name: getattr(cfg, name) for name in C.ModelSpec.features if name != "activation"},
        activation=getattr(C.Activation, cfg.activation),
    )
    spec.check()
    return spec
