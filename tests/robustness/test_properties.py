"""Property tests (hypothesis): the ops against their torch references on random shapes
and values, including odd sizes and large magnitudes."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyruntime import ops
from tests.kernels import reference as ref
from tests.tolerances import assert_close

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = st.sampled_from([torch.float32, torch.bfloat16])


def tensor(seed, shape, dtype, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


@SETTINGS
@given(rows=st.integers(1, 9), hidden=st.integers(1, 700), dtype=DTYPES, seed=st.integers(0, 2**31),
       scale=st.sampled_from([1e-3, 1.0, 1e4]))
def test_rms_norm_property(rows, hidden, dtype, seed, scale):
    x = tensor(seed, (rows, hidden), dtype, scale)
    w = tensor(seed + 1, (hidden,), dtype)
    got = ops.rms_norm(x, w)
    want = ref.rms_norm(x, w)
    assert torch.isfinite(got.float()).all() == torch.isfinite(want).all()
    assert_close(got, want)


@SETTINGS
@given(rows=st.integers(1, 5), inter=st.integers(1, 600), dtype=DTYPES, seed=st.integers(0, 2**31))
def test_silu_and_mul_property(rows, inter, dtype, seed):
    x = tensor(seed, (rows, 2 * inter), dtype, 5.0)
    assert_close(ops.silu_and_mul(x), ref.silu_and_mul(x))


@SETTINGS
@given(tokens=st.integers(1, 20), k=st.integers(1, 300), n=st.integers(1, 300), dtype=DTYPES, seed=st.integers(0, 2**31))
def test_linear_property(tokens, k, n, dtype, seed):
    x = tensor(seed, (tokens, k), dtype)
    w = tensor(seed + 1, (n, k), dtype, k**-0.5)
    assert_close(ops.linear(x, w), x.float() @ w.float().T, scale=3)


@SETTINGS
@given(batch=st.integers(1, 4), hkv=st.integers(1, 4), ratio=st.sampled_from([1, 2, 3, 4, 8]),
       head_dim=st.sampled_from([32, 64, 80, 96, 128, 256]), s_max=st.integers(1, 700), dtype=DTYPES,
       seed=st.integers(0, 2**31), data=st.data())
def test_decode_attention_property(batch, hkv, ratio, head_dim, s_max, dtype, seed, data):
    lens = torch.tensor(data.draw(st.lists(st.integers(1, s_max), min_size=batch, max_size=batch)), dtype=torch.int32)
    q = tensor(seed, (batch, hkv * ratio, head_dim), dtype)
    k = tensor(seed + 1, (batch, hkv, s_max, head_dim), dtype)
    v = tensor(seed + 2, (batch, hkv, s_max, head_dim), dtype)
    assert_close(ops.gqa_decode_attention(q, k, v, lens), ref.decode_attention(q, k, v, lens))


@SETTINGS
@given(tokens=st.integers(1, 9), hq=st.integers(1, 8), hkv=st.integers(1, 4), half=st.integers(1, 64),
       extra=st.integers(0, 16), neox=st.booleans(), seed=st.integers(0, 2**31))
def test_rotary_property(tokens, hq, hkv, half, extra, neox, seed):
    rot = 2 * half
    cache = ref.cos_sin_cache(300, rot)
    positions = torch.randint(0, 300, (tokens,), generator=torch.Generator().manual_seed(seed))
    q = tensor(seed, (tokens, hq, rot + extra), torch.float32)
    k = tensor(seed + 1, (tokens, hkv, rot + extra), torch.float32)
    want_q, want_k = ref.rotary(q, positions, cache, neox), ref.rotary(k, positions, cache, neox)
    ops.rotary_embedding(positions, q, k, cache, neox)
    assert_close(q, want_q)
    assert_close(k, want_k)


@SETTINGS
@given(values=st.lists(st.sampled_from([-1.5, 0.0, 2.0, 2.0, 7.25, float("inf"), float("-inf"), float("nan")]),
                       min_size=1, max_size=64),
       step=st.integers(1, 3))
def test_greedy_pick_matches_torch_argmax(values, step):
    # Ties (the first wins), infinities and NaN (counted as largest), strided views.
    from pyruntime.sampling import Sampler, SamplingParams

    logits = torch.tensor(values, dtype=torch.float32)[::step]
    assert Sampler(SamplingParams(), [])(logits) == int(torch.argmax(logits))
