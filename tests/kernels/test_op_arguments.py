"""Wrong arguments to the public ops raise TypeError or ValueError naming the op and the
argument, at the Python boundary: never AttributeError from inside, never a silent result.

Each row of CASES takes an op's valid arguments (VALID) and replaces one of them with a bad
value; a callable bad value is applied to the valid one (e.g. moves it to the meta device).
"""

import numpy as np
import pytest
import torch

from pyruntime import ops
from tests.kernels import reference as ref


def VALID(op):
    """Valid keyword arguments of `op` on the CPU, fresh for every call (some ops are in place)."""
    cache = ref.cos_sin_cache(32, 64)
    return {
        "rms_norm": lambda: dict(x=torch.randn(3, 64), weight=torch.randn(64), eps=1e-6),
        "fused_add_rms_norm": lambda: dict(x=torch.randn(3, 64), residual=torch.randn(3, 64),
                                           weight=torch.randn(64), eps=1e-6),
        "rotary_embedding": lambda: dict(positions=torch.tensor([1, 7]), q=torch.randn(2, 4, 64),
                                         k=torch.randn(2, 2, 64), cos_sin_cache=cache, is_neox=True),
        "rotary_embedding_and_cache": lambda: dict(
            positions=torch.tensor([[3]]), q=torch.randn(1, 1, 4, 64), k=torch.randn(1, 1, 2, 64),
            v=torch.randn(1, 1, 2, 64), k_cache=torch.zeros(1, 2, 8, 64), v_cache=torch.zeros(1, 2, 8, 64),
            cos_sin_cache=cache, is_neox=False),
        "silu_and_mul": lambda: dict(x=torch.randn(2, 32)),
        "linear": lambda: dict(x=torch.randn(2, 64), weight=torch.randn(48, 64)),
        "gated_mlp": lambda: dict(x=torch.randn(2, 64), gate_up_weight=torch.randn(96, 64),
                                  down_weight=torch.randn(64, 48)),
        "gqa_decode_attention": lambda: dict(
            q=torch.randn(2, 8, 64), k_cache=torch.randn(2, 2, 16, 64), v_cache=torch.randn(2, 2, 16, 64),
            seq_lens=torch.tensor([5, 9], dtype=torch.int32), scale=0.125),
        "prefill_attention": lambda: dict(q=torch.randn(5, 8, 64), k_cache=torch.randn(2, 16, 64),
                                          v_cache=torch.randn(2, 16, 64), start_pos=3, scale=0.125),
    }[op]()


def META(t):
    return t.to("meta")


def BF16(t):
    return t.bfloat16()


NAN, INF = float("nan"), float("inf")
NOT_TENSOR = "must be a torch.Tensor, got"
EPS = "eps must be a finite non-negative number, got"
SCALE = "scale must be a finite number, got"
START_POS = "start_pos must be a non-negative integer, got"
IS_NEOX = "is_neox must be a bool, got"

# (op, argument, bad value, exception type, message fragment)
CASES = [
    # rms_norm
    ("rms_norm", "x", [1.0] * 64, TypeError, f"rms_norm: x {NOT_TENSOR} [1.0, 1.0"),
    ("rms_norm", "weight", [1.0] * 64, TypeError, f"rms_norm: weight {NOT_TENSOR} [1.0"),
    ("rms_norm", "x", 1.0, TypeError, f"rms_norm: x {NOT_TENSOR} 1.0 (float)"),
    ("rms_norm", "weight", None, TypeError, f"rms_norm: weight {NOT_TENSOR} None (NoneType)"),
    ("rms_norm", "eps", "1e-6", TypeError, f"rms_norm: {EPS} '1e-6' (str)"),
    ("rms_norm", "eps", None, TypeError, f"rms_norm: {EPS} None (NoneType)"),
    ("rms_norm", "eps", True, TypeError, f"rms_norm: {EPS} True (bool)"),
    ("rms_norm", "eps", torch.tensor([1e-6]), TypeError, f"rms_norm: {EPS} tensor(shape=(1,)"),
    ("rms_norm", "eps", 1e-6j, TypeError, f"rms_norm: {EPS} 1e-06j (complex)"),
    ("rms_norm", "eps", NAN, ValueError, f"rms_norm: {EPS} nan (float)"),
    ("rms_norm", "eps", INF, ValueError, f"rms_norm: {EPS} inf (float)"),
    ("rms_norm", "eps", -1e-6, ValueError, f"rms_norm: {EPS} -1e-06 (float)"),
    ("rms_norm", "eps", 10**400, ValueError, f"rms_norm: {EPS} 1000"),
    ("rms_norm", "weight", META, ValueError, "rms_norm: weight is on meta but x is on cpu"),
    ("rms_norm", "x", META, ValueError, "rms_norm: weight is on cpu but x is on meta"),
    ("rms_norm", "weight", BF16, ValueError, "weight has dtype"),
    # fused_add_rms_norm
    ("fused_add_rms_norm", "x", [0.0] * 64, TypeError, f"fused_add_rms_norm: x {NOT_TENSOR} [0.0"),
    ("fused_add_rms_norm", "residual", [0.0] * 64, TypeError, f"fused_add_rms_norm: residual {NOT_TENSOR} [0.0"),
    ("fused_add_rms_norm", "weight", [1.0] * 64, TypeError, f"fused_add_rms_norm: weight {NOT_TENSOR} [1.0"),
    ("fused_add_rms_norm", "eps", "1e-6", TypeError, f"fused_add_rms_norm: {EPS} '1e-6' (str)"),
    ("fused_add_rms_norm", "eps", None, TypeError, f"fused_add_rms_norm: {EPS} None"),
    ("fused_add_rms_norm", "eps", -1.0, ValueError, f"fused_add_rms_norm: {EPS} -1.0 (float)"),
    ("fused_add_rms_norm", "residual", META, ValueError, "fused_add_rms_norm: residual is on meta but x is on cpu"),
    ("fused_add_rms_norm", "weight", META, ValueError, "fused_add_rms_norm: weight is on meta but x is on cpu"),
    ("fused_add_rms_norm", "residual", BF16, ValueError, "residual has dtype"),
    # rotary_embedding
    ("rotary_embedding", "positions", [1, 7], TypeError, f"rotary_embedding: positions {NOT_TENSOR} [1, 7] (list)"),
    ("rotary_embedding", "q", [[[0.0] * 64]], TypeError, f"rotary_embedding: q {NOT_TENSOR} [[[0.0"),
    ("rotary_embedding", "cos_sin_cache", None, TypeError, f"rotary_embedding: cos_sin_cache {NOT_TENSOR} None"),
    ("rotary_embedding", "is_neox", "no", TypeError, f"rotary_embedding: {IS_NEOX} 'no' (str)"),
    ("rotary_embedding", "is_neox", 1, TypeError, f"rotary_embedding: {IS_NEOX} 1 (int)"),
    ("rotary_embedding", "is_neox", None, TypeError, f"rotary_embedding: {IS_NEOX} None (NoneType)"),
    ("rotary_embedding", "k", META, ValueError, "rotary_embedding: k is on meta but q is on cpu"),
    ("rotary_embedding", "positions", META, ValueError, "rotary_embedding: positions is on meta but q is on cpu"),
    ("rotary_embedding", "cos_sin_cache", META, ValueError,
     "rotary_embedding: cos_sin_cache is on meta but q is on cpu"),
    ("rotary_embedding", "k", BF16, ValueError, "k has dtype"),
    # rotary_embedding_and_cache
    ("rotary_embedding_and_cache", "positions", [[3]], TypeError,
     f"rotary_embedding_and_cache: positions {NOT_TENSOR} [[3]]"),
    ("rotary_embedding_and_cache", "v", 0.0, TypeError, f"rotary_embedding_and_cache: v {NOT_TENSOR} 0.0 (float)"),
    ("rotary_embedding_and_cache", "k_cache", None, TypeError,
     f"rotary_embedding_and_cache: k_cache {NOT_TENSOR} None"),
    ("rotary_embedding_and_cache", "is_neox", "yes", TypeError, f"rotary_embedding_and_cache: {IS_NEOX} 'yes' (str)"),
    ("rotary_embedding_and_cache", "is_neox", 0, TypeError, f"rotary_embedding_and_cache: {IS_NEOX} 0 (int)"),
    ("rotary_embedding_and_cache", "k_cache", META, ValueError,
     "rotary_embedding_and_cache: k_cache is on meta but q is on cpu"),
    ("rotary_embedding_and_cache", "v", META, ValueError, "rotary_embedding_and_cache: v is on meta but q is on cpu"),
    ("rotary_embedding_and_cache", "v_cache", BF16, ValueError, "v_cache has dtype"),
    # silu_and_mul
    ("silu_and_mul", "x", [[1.0, 2.0]], TypeError, f"silu_and_mul: x {NOT_TENSOR} [[1.0, 2.0]] (list)"),
    ("silu_and_mul", "x", None, TypeError, f"silu_and_mul: x {NOT_TENSOR} None"),
    # linear
    ("linear", "x", [[1.0] * 64], TypeError, f"linear: x {NOT_TENSOR} [[1.0"),
    ("linear", "weight", 2.0, TypeError, f"linear: weight {NOT_TENSOR} 2.0 (float)"),
    ("linear", "weight", META, ValueError, "linear: weight is on meta but x is on cpu"),
    ("linear", "weight", BF16, ValueError, "weight has dtype"),
    # gated_mlp
    ("gated_mlp", "x", [[1.0] * 64], TypeError, f"gated_mlp: x {NOT_TENSOR} [[1.0"),
    ("gated_mlp", "gate_up_weight", None, TypeError, f"gated_mlp: gate_up_weight {NOT_TENSOR} None"),
    ("gated_mlp", "down_weight", META, ValueError, "gated_mlp: down_weight is on meta but x is on cpu"),
    ("gated_mlp", "down_weight", BF16, ValueError, "down_weight has dtype"),
    # gqa_decode_attention
    ("gqa_decode_attention", "q", [[[0.0] * 64] * 8] * 2, TypeError, f"gqa_decode_attention: q {NOT_TENSOR} [[[0.0"),
    ("gqa_decode_attention", "seq_lens", [5, 9], TypeError,
     f"gqa_decode_attention: seq_lens {NOT_TENSOR} [5, 9] (list)"),
    ("gqa_decode_attention", "k_cache", META, ValueError, "gqa_decode_attention: k_cache is on meta but q is on cpu"),
    ("gqa_decode_attention", "v_cache", META, ValueError, "gqa_decode_attention: v_cache is on meta but q is on cpu"),
    ("gqa_decode_attention", "seq_lens", META, ValueError, "gqa_decode_attention: seq_lens is on meta but q is on cpu"),
    ("gqa_decode_attention", "q", META, ValueError, "gqa_decode_attention: k_cache is on cpu but q is on meta"),
    ("gqa_decode_attention", "scale", "0.1", TypeError, f"gqa_decode_attention: {SCALE} '0.1' (str)"),
    ("gqa_decode_attention", "scale", False, TypeError, f"gqa_decode_attention: {SCALE} False (bool)"),
    ("gqa_decode_attention", "scale", NAN, ValueError, f"gqa_decode_attention: {SCALE} nan (float)"),
    ("gqa_decode_attention", "scale", -INF, ValueError, f"gqa_decode_attention: {SCALE} -inf (float)"),
    ("gqa_decode_attention", "k_cache", BF16, ValueError, "k_cache has dtype"),
    # prefill_attention
    ("prefill_attention", "q", [[[0.0] * 64] * 8] * 5, TypeError, f"prefill_attention: q {NOT_TENSOR} [[[0.0"),
    ("prefill_attention", "v_cache", None, TypeError, f"prefill_attention: v_cache {NOT_TENSOR} None"),
    ("prefill_attention", "k_cache", META, ValueError, "prefill_attention: k_cache is on meta but q is on cpu"),
    ("prefill_attention", "start_pos", "3", TypeError, f"prefill_attention: {START_POS} '3' (str)"),
    ("prefill_attention", "start_pos", 2.5, TypeError, f"prefill_attention: {START_POS} 2.5 (float)"),
    ("prefill_attention", "start_pos", None, TypeError, f"prefill_attention: {START_POS} None"),
    ("prefill_attention", "start_pos", True, TypeError, f"prefill_attention: {START_POS} True (bool)"),
    ("prefill_attention", "start_pos", -1, ValueError, f"prefill_attention: {START_POS} -1 (int)"),
    ("prefill_attention", "scale", "0.1", TypeError, f"prefill_attention: {SCALE} '0.1' (str)"),
    ("prefill_attention", "scale", INF, ValueError, f"prefill_attention: {SCALE} inf (float)"),
    ("prefill_attention", "k_cache", BF16, ValueError, "k_cache has dtype"),
]


def _id(case):
    op, arg, bad, exc, _ = case
    if callable(bad):
        shown = bad.__name__
    else:
        shown = type(bad).__name__ if isinstance(bad, (list, torch.Tensor)) else repr(bad)[:12]
    return f"{op}-{arg}-{shown}"


@pytest.mark.parametrize("op,arg,bad,exc,fragment", CASES, ids=[_id(c) for c in CASES])
def test_bad_argument_rejected(op, arg, bad, exc, fragment):
    args = VALID(op)
    args[arg] = bad(args[arg]) if callable(bad) else bad
    with pytest.raises(exc) as info:
        getattr(ops, op)(**args)
    assert fragment in str(info.value)


@pytest.mark.parametrize("op", sorted({c[0] for c in CASES}))
def test_valid_arguments_accepted(op):
    """The table's baseline: every op runs on VALID, so each row fails for its one bad value."""
    getattr(ops, op)(**VALID(op))


# Real-number scalars other than float: ints, numpy scalars and 0-d arrays, 0-d torch tensors.
GOOD_NUMBERS = [0, 1e-5, np.float32(1e-6), np.float64(1e-6), np.int64(0), np.array(1e-6), torch.tensor(1e-6),
                torch.tensor(0)]


@pytest.mark.parametrize("eps", GOOD_NUMBERS, ids=repr)
def test_real_scalars_accepted_as_eps(eps):
    x, w = torch.randn(3, 64), torch.randn(64)
    torch.testing.assert_close(ops.rms_norm(x, w, eps), ref.rms_norm(x, w, float(eps)))


@pytest.mark.parametrize("start_pos", [3, np.int64(3), torch.tensor(3)], ids=repr)
def test_integer_scalars_accepted_as_start_pos(start_pos):
    args = VALID("prefill_attention")
    expected = ops.prefill_attention(**args)
    torch.testing.assert_close(ops.prefill_attention(**{**args, "start_pos": start_pos}), expected)


def test_scale_none_is_the_default():
    args = VALID("gqa_decode_attention")
    torch.testing.assert_close(ops.gqa_decode_attention(**{**args, "scale": None}),
                               ops.gqa_decode_attention(**{**args, "scale": np.float32(1 / 8)}))


# All-meta inputs give a shape-only meta result, as a Meta kernel does (nothing is computed).
META_SHAPES = {
    "rms_norm": (3, 64),
    "silu_and_mul": (2, 16),
    "linear": (2, 48),
    "gated_mlp": (2, 64),
    "gqa_decode_attention": (2, 8, 64),
    "prefill_attention": (5, 8, 64),
}


@pytest.mark.parametrize("op", sorted(META_SHAPES))
def test_all_meta_inputs_give_a_shape_only_result(op):
    args = {k: META(v) if isinstance(v, torch.Tensor) else v for k, v in VALID(op).items()}
    out = getattr(ops, op)(**args)
    assert out.device.type == "meta" and tuple(out.shape) == META_SHAPES[op]


def test_registered_op_rejects_mixed_devices():
    """torch.ops.pyruntime itself: a meta argument among CPU ones dispatches to the Meta kernel,
    which must not return as if it had computed the op."""
    a = VALID("gqa_decode_attention")
    with pytest.raises(ValueError, match="k_cache is on meta but out is on cpu"):
        torch.ops.pyruntime.gqa_decode_attention(torch.empty(2, 8, 64), a["q"], META(a["k_cache"]), a["v_cache"],
                                                 a["seq_lens"], 0.125)
