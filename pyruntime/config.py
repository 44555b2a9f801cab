"""Model configuration read from a Hugging Face config.json, validated field by field."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from pyruntime.errors import ModelLoadError

SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Phi3ForCausalLM",
    "Gemma2ForCausalLM", "Gemma3ForCausalLM")
GEMMA = ("Gemma2ForCausalLM", "Gemma3ForCausalLM")
# The MLP gate activations the engines have, by the names transformers' configs use.
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}


ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")


@dataclass(frozen=True)
class RopeConfig:
    """RoPE and its scaling as transformers' modeling_rope_utils defines each type. `dynamic`
    (NTK) changes nothing up to max_position_embeddings, which is as far as pyruntime runs a
    model; `longrope` takes its long factors when the engine's max_seq_len exceeds
    original_max_position_embeddings, its short ones otherwise (chosen once, as llama.cpp does;
    transformers chooses per forward call by the length of the sequence so far)."""

    theta: float = 10000.0
    kind: str = "default"  # one of ROPE_TYPES
    factor: float = 1.0
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    original_max_position_embeddings: int = 8192
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    truncate: bool = True  # yarn
    mscale: float = 0.0  # yarn
    mscale_all_dim: float = 0.0  # yarn
    attention_factor: float | None = None  # yarn, longrope: cos and sin times this (None: from factor)
    short_factor: tuple[float, ...] = ()  # longrope
    long_factor: tuple[float, ...] = ()  # longrope


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool  # biases on q, k, v (Qwen2; Llama with attention_bias)
    o_bias: bool  # bias on o_proj (Llama with attention_bias)
    rotary_dim: int
    qk_norm: bool = False  # RMSNorm of every q and k head before RoPE (Qwen3)
    rope: RopeConfig = field(default_factory=RopeConfig)
    sliding_window: int | None = None
    # Per layer: the sliding window of its attention (the token at pos attends keys
    # [pos + 1 - window, pos]), 0 for full attention. Empty: every layer full.
    layer_windows: tuple[int, ...] = ()
    # RoPE of the sliding layers where it differs from `rope` (Gemma 3's local base).
    local_rope: RopeConfig | None = None
    activation: str = "silu"  # the MLP's gate activation: silu or gelu_tanh
    # Gemma: RMSNorm computes x * (1 + w) (folded into the weights at load), embeddings are
    # scaled by sqrt(hidden), the attention's and the MLP's outputs are normed before their
    # residual adds, scores use query_pre_attn_scalar, and Gemma 2 soft-caps scores and logits.
    norm_weight_offset: float = 0.0
    embed_scale: float = 1.0
    post_norms: bool = False
    attn_scale: float | None = None  # None: head_dim ** -0.5
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @classmethod
    def from_file(cls, path: Path) -> "ModelConfig":
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ModelLoadError(f"{path}: config.json not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"{path}: not a readable JSON file ({e})") from None
        if not isinstance(data, dict):
            raise ModelLoadError(f"{path}: expected a JSON object")
        try:
            return cls.from_dict(data, str(path))
        except ModelLoadError:
            raise
        except (TypeError, ValueError, AttributeError, KeyError) as e:  # a field of an unexpected shape
            raise ModelLoadError(f"{path}: invalid configuration ({type(e).__name__}: {e})") from None

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> "ModelConfig":
        def get(name, kind, default=None, required=True):
            if name not in d or d[name] is None:
                if required and default is None:
                    raise ModelLoadError(f"{source}: field {name!r} is missing")
                return default
            v = d[name]
            ok = isinstance(v, kind) and not (kind is not bool and isinstance(v, bool))
            if kind is float and isinstance(v, int) and not isinstance(v, bool):
                v, ok = float(v), True
            if not ok:
                raise ModelLoadError(f"{source}: field {name!r} must be {kind.__name__}, got {type(v).__name__} {v!r}")
            return v

        archs = get("architectures", list)
        arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            raise ModelLoadError(
                f"{source}: architecture {archs} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
            )
        hidden = get("hidden_size", int)
        heads = get("num_attention_heads", int)
        kv_heads = get("num_key_value_heads", int, default=heads)
        layers = get("num_hidden_layers", int)
        for name, v in (("hidden_size", hidden), ("num_attention_heads", heads), ("num_key_value_heads", kv_heads), ("num_hidden_layers", layers)):
            if v <= 0:
                raise ModelLoadError(f"{source}: field {name!r} must be positive, got {v}")
        if heads % kv_heads:
            raise ModelLoadError(f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
        head_dim = get("head_dim", int, default=hidden // heads, required=False)
        if get("mlp_bias", bool, default=False, required=False):
            raise ModelLoadError(f"{source}: mlp_bias=true is not supported")
        attention_bias = arch == "Qwen2ForCausalLM" or get("attention_bias", bool, default=False, required=False)
        o_bias = arch != "Qwen2ForCausalLM" and attention_bias
        partial = get("partial_rotary_factor", float, default=1.0, required=False)
        rotary_dim = int(head_dim * partial)
        rotary_dim -= rotary_dim % 2
        eos = d.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if isinstance(eos, int) else ())
        sliding = get("sliding_window", int, required=False)
        if sliding is not None and sliding <= 0:
            raise ModelLoadError(f"{source}: field 'sliding_window' must be positive, got {sliding}")
        windows = _layer_windows(d, arch, layers, sliding, source)
        gemma = arch in GEMMA
        act_field = "hidden_activation" if gemma else "hidden_act"
        act = get(act_field, str, default="gelu_pytorch_tanh" if gemma else "silu", required=False)
        if act not in ACTIVATIONS:
            raise ModelLoadError(f"{source}: {act_field} {act!r} is not supported ({', '.join(ACTIVATIONS)})")
        if get("use_bidirectional_attention", bool, default=False, required=False):
            raise ModelLoadError(f"{source}: use_bidirectional_attention=true is not supported (causal attention only)")
        softcaps = [get(f, float, default=0.0, required=False) for f in ("attn_logit_softcapping", "final_logit_softcapping")]
        for name, v in zip(("attn_logit_softcapping", "final_logit_softcapping"), softcaps):
            if v < 0 or not math.isfinite(v):
                raise ModelLoadError(f"{source}: field {name!r} must be a positive number, got {v}")
        scalar = get("query_pre_attn_scalar", float, default=float(head_dim), required=False) if gemma else None
        if scalar is not None and not scalar > 0:
            raise ModelLoadError(f"{source}: field 'query_pre_attn_scalar' must be positive, got {scalar}")
        rope, local_rope = _rope_configs(d, source)
        for r in (rope, local_rope):
            if r is not None and r.kind == "longrope" and not len(r.short_factor) == len(r.long_factor) == rotary_dim // 2:
                raise ModelLoadError(f"{source}: longrope short_factor and long_factor must list {rotary_dim // 2} "
                                     f"values (half the rotary dimension), got {len(r.short_factor)} and {len(r.long_factor)}")
        if arch == "Gemma3ForCausalLM" and local_rope is None:
            local_rope = RopeConfig(theta=10000.0)  # transformers' default local base
        return cls(
            architecture=arch,
            vocab_size=get("vocab_size", int),
            hidden_size=hidden,
            intermediate_size=get("intermediate_size", int),
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=get("rms_norm_eps", float, default=1e-6, required=False),
            max_position_embeddings=get("max_position_embeddings", int, default=2048, required=False),
            tie_word_embeddings=get("tie_word_embeddings", bool, default=False, required=False),
            attention_bias=attention_bias,
            o_bias=o_bias,
            rotary_dim=rotary_dim,
            qk_norm=arch in ("Qwen3ForCausalLM", "Gemma3ForCausalLM"),
            rope=rope,
            local_rope=local_rope if any(windows) else None,
            activation=ACTIVATIONS[act],
            norm_weight_offset=1.0 if gemma else 0.0,
            embed_scale=math.sqrt(hidden) if gemma else 1.0,
            post_norms=gemma,
            attn_scale=scalar**-0.5 if scalar is not None else None,
            attn_softcap=softcaps[0] if gemma else 0.0,
            final_softcap=softcaps[1] if gemma else 0.0,
            sliding_window=sliding if any(windows) else None,
            layer_windows=windows if any(windows) else (),
            eos_token_ids=eos_ids,
            bos_token_id=d.get("bos_token_id") if isinstance(d.get("bos_token_id"), int) else None,
        )


def _layer_windows(d: dict, arch: str, layers: int, sliding: int | None, source: str) -> tuple[int, ...]:
    """Each layer's sliding window (0: full attention), as transformers assigns them: from
    `layer_types` where the config lists them, else by the family's rule (Mistral, Phi-3: every
    layer; Qwen2/Qwen3 with use_sliding_window: layers from max_window_layers on)."""
    types = d.get("layer_types")
    if types is not None:
        if not isinstance(types, list) or len(types) != layers:
            raise ModelLoadError(f"{source}: field 'layer_types' must list the {layers} layers, got {types!r}")
        unknown = sorted({t for t in types if t not in ("full_attention", "sliding_attention")}, key=str)
        if unknown:
            raise ModelLoadError(f"{source}: layer_types {unknown} are not supported (full_attention, sliding_attention)")
        if "sliding_attention" in types and sliding is None:
            raise ModelLoadError(f"{source}: layer_types has sliding_attention layers but no sliding_window")
        return tuple(sliding if t == "sliding_attention" else 0 for t in types)
    if sliding is None:
        return ()
    if arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        if not d.get("use_sliding_window", False):
            return ()
        first = d.get("max_window_layers", layers)
        if isinstance(first, bool) or not isinstance(first, int):
            raise ModelLoadError(f"{source}: field 'max_window_layers' must be int, got {first!r}")
        return tuple(sliding if i >= first else 0 for i in range(layers))
    if arch in ("MistralForCausalLM", "Phi3ForCausalLM"):
        return (sliding,) * layers
    if arch in GEMMA:  # as transformers fills layer_types in: every 2nd (Gemma 2) or 6th (Gemma 3) full
        pattern = 2 if arch == "Gemma2ForCausalLM" else d.get("sliding_window_pattern", 6)
        if isinstance(pattern, bool) or not isinstance(pattern, int) or pattern <= 0:
            raise ModelLoadError(f"{source}: field 'sliding_window_pattern' must be a positive int, got {pattern!r}")
        return tuple(sliding if (i + 1) % pattern else 0 for i in range(layers))
    return ()  # Llama's attention has no window (transformers ignores the field there too)


def _rope_configs(d: dict, source: str) -> tuple[RopeConfig, RopeConfig | None]:
    """The RoPE of the full-attention layers and, where the config gives the sliding layers their
    own (Gemma 3: rope_parameters per layer type, or rope_local_base_freq), theirs."""
    params = d.get("rope_parameters") or {}
    if isinstance(params, dict) and ("full_attention" in params or "sliding_attention" in params):
        per_type = {k: v for k, v in params.items()}
        unknown = sorted(set(per_type) - {"full_attention", "sliding_attention"})
        if unknown:
            raise ModelLoadError(f"{source}: rope_parameters for {unknown} are not supported")
        full = _rope_config({**d, "rope_parameters": per_type.get("full_attention") or {}}, source)
        local = per_type.get("sliding_attention")
        return full, None if local is None else _rope_config({**d, "rope_parameters": local, "rope_scaling": None}, source)
    local_base = d.get("rope_local_base_freq")
    local = None if local_base is None else _rope_config({"rope_theta": local_base}, source)
    return _rope_config(d, source), local


def _rope_config(d: dict, source: str) -> RopeConfig:
    # transformers 4 writes rope_theta + rope_scaling; transformers 5 writes rope_parameters.
    params = d.get("rope_parameters") or {}
    scaling = d.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(scaling, dict):
        raise ModelLoadError(f"{source}: rope_parameters / rope_scaling must be objects")
    params = {**scaling, **params}
    theta = params.get("rope_theta", d.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    if not isinstance(theta, (int, float)) or isinstance(theta, bool) or theta <= 0:
        raise ModelLoadError(f"{source}: rope_theta must be a positive number, got {theta!r}")
    if kind not in ROPE_TYPES:
        raise ModelLoadError(f"{source}: rope scaling type {kind!r} is not supported ({', '.join(ROPE_TYPES)})")
    # The pretraining length: Phi-3 writes it beside the RoPE parameters, and it wins there (as in
    # transformers); else the parameters', else max_position_embeddings.
    original = d.get("original_max_position_embeddings") if kind in ("yarn", "longrope", "llama3") else None
    original = original or params.get("original_max_position_embeddings") or (
        d.get("max_position_embeddings", 8192) if kind in ("yarn", "longrope") else 8192)
    factor = params.get("factor")
    if factor is None and kind in ("yarn", "longrope"):  # from the lengths, as transformers does
        factor = d.get("max_position_embeddings", original) / original
    try:
        rope = RopeConfig(
            theta=float(theta),
            kind=kind,
            factor=float(1.0 if factor is None else factor),
            low_freq_factor=float(params.get("low_freq_factor", 1.0)),
            high_freq_factor=float(params.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=int(original),
            beta_fast=float(params.get("beta_fast") or 32.0),
            beta_slow=float(params.get("beta_slow") or 1.0),
            truncate=bool(params.get("truncate", True)),
            mscale=float(params.get("mscale") or 0.0),
            mscale_all_dim=float(params.get("mscale_all_dim") or 0.0),
            attention_factor=None if params.get("attention_factor") is None else float(params["attention_factor"]),
            short_factor=tuple(float(x) for x in params.get("short_factor") or ()),
            long_factor=tuple(float(x) for x in params.get("long_factor") or ()),
        )
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{source}: bad rope scaling parameters ({e})") from None
    if kind in ("linear", "dynamic", "yarn") and not rope.factor > 0:
        raise ModelLoadError(f"{source}: rope scaling factor must be positive, got {rope.factor}")
    if kind == "longrope" and not (rope.short_factor and rope.long_factor):
        raise ModelLoadError(f"{source}: longrope needs short_factor and long_factor lists")
    return rope


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def attention_factor(rope: RopeConfig) -> float:
    """What cos and sin are multiplied by (yarn, longrope; 1 for the other types)."""
    if rope.attention_factor is not None:
        return rope.attention_factor
    if rope.kind == "yarn":
        if rope.mscale and rope.mscale_all_dim:
            return _yarn_mscale(rope.factor, rope.mscale) / _yarn_mscale(rope.factor, rope.mscale_all_dim)
        return _yarn_mscale(rope.factor)
    if rope.kind == "longrope" and rope.factor > 1.0:
        return math.sqrt(1 + math.log(rope.factor) / math.log(rope.original_max_position_embeddings))
    return 1.0


def inv_frequencies(rope: RopeConfig, rotary_dim: int, max_pos: int = 0):
    """Inverse frequencies [rotary_dim / 2], with the configured scaling, computed in float32
    in the same order as transformers so that both agree to the last bit. max_pos: the positions
    the engine runs (longrope's choice of factors)."""
    import torch

    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    if rope.kind == "longrope":
        factors = rope.long_factor if max_pos > rope.original_max_position_embeddings else rope.short_factor
        if len(factors) != rotary_dim // 2:
            raise ModelLoadError(f"longrope factors must list {rotary_dim // 2} values, got {len(factors)}")
        return 1.0 / (torch.tensor(factors, dtype=torch.float32) * rope.theta**exponents)
    if rope.kind == "yarn":
        pos_freqs = rope.theta ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim)
        extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (rope.factor * pos_freqs)

        def correction_dim(rotations):
            return (rotary_dim * math.log(rope.original_max_position_embeddings / (rotations * 2 * math.pi))) / (
                2 * math.log(rope.theta))

        low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
        if rope.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, rotary_dim - 1)
        if low == high:
            high += 0.001
        ramp = torch.clamp((torch.arange(rotary_dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
        extrapolation_factor = 1 - ramp
        return interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor
    inv = 1.0 / (rope.theta**exponents)
    if rope.kind == "linear":
        inv = inv / rope.factor
    elif rope.kind == "llama3":
        low_wavelen = rope.original_max_position_embeddings / rope.low_freq_factor
        high_wavelen = rope.original_max_position_embeddings / rope.high_freq_factor
        wavelen = 2 * math.pi / inv
        smooth = (rope.original_max_position_embeddings / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor
        )
        scaled = torch.where(wavelen > low_wavelen, inv / rope.factor, inv)
        mid = (1 - smooth) * scaled / rope.factor + smooth * scaled
        is_mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = torch.where(is_mid, mid, scaled)
    return inv


def cos_sin_cache(rope: RopeConfig, rotary_dim: int, max_pos: int):
    """float32 [max_pos, rotary_dim]: cos of position x frequency, then sin."""
    import torch

    inv = inv_frequencies(rope, rotary_dim, max_pos)
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv)
    scale = attention_factor(rope)
    cos, sin = freqs.cos(), freqs.sin()
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    return torch.cat([cos, sin], dim=-1).contiguous()
