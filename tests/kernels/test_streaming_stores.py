"""The CPU kernels' streaming-store path (taken for outputs beyond the last-level cache) must
write exactly what the ordinary path writes: same arithmetic, only the stores differ. Rows
that start off a 64-byte boundary (odd widths, offset views) exercise the peeled heads."""

import pytest
import torch

from pyruntime import ops
from pyruntime._ext import C
from tests.kernels import reference as ref


def both_paths(fn):
    try:
        C.set_streaming_store_threshold(1 << 62)
        cached = fn()
        C.set_streaming_store_threshold(0)
        streamed = fn()
    finally:
        C.set_streaming_store_threshold(-1)
    return cached, streamed


def test_default_threshold_is_a_fraction_of_the_cache():
    C.set_streaming_store_threshold(-1)
    assert C.streaming_store_threshold() > 0
    C.set_streaming_store_threshold(0)
    assert C.streaming_store_threshold() == 0
    C.set_streaming_store_threshold(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,inter", [(3, 83), (5, 1536), (2, 5120 + 8)])
def test_silu_and_mul_streamed_equals_cached(dtype, rows, inter):
    x = torch.randn(rows, 2 * inter + 3, dtype=dtype)[:, 1 : 1 + 2 * inter]
    cached, streamed = both_paths(lambda: ops.silu_and_mul(x).clone())
    assert torch.equal(cached, streamed)
    torch.testing.assert_close(streamed.float(), ref.silu_and_mul(x).float(), rtol=2e-2, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,hidden", [(7, 83), (4, 576), (3, 4096 + 8)])
def test_rms_norm_streamed_equals_cached(dtype, rows, hidden):
    x = torch.randn(rows, hidden + 1, dtype=dtype)[:, 1:]
    w = torch.randn(hidden, dtype=dtype)
    cached, streamed = both_paths(lambda: ops.rms_norm(x, w).clone())
    assert torch.equal(cached, streamed)
    torch.testing.assert_close(streamed.float(), ref.rms_norm(x, w).float(), rtol=2e-2, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 80, 128])
def test_rope_cache_write_streamed_equals_cached(dtype, d):
    batch, tokens, hq, hkv, s_max = 2, 7, 8, 2, 40
    cache = ref.cos_sin_cache(64, d)
    positions = torch.stack([torch.randperm(s_max)[:tokens] for _ in range(batch)])
    q0 = torch.randn(batch, tokens, hq, d, dtype=dtype)
    k0 = torch.randn(batch, tokens, hkv, d, dtype=dtype)
    v = torch.randn(batch, tokens, hkv, d, dtype=dtype)

    def run():
        q, k = q0.clone(), k0.clone()
        k_cache = torch.full((batch, hkv, s_max, d), 7.0, dtype=dtype)
        v_cache = torch.full_like(k_cache, 7.0)
        ops.rotary_embedding_and_cache(positions, q, k, v, k_cache, v_cache, cache)
        return torch.cat([q.flatten(), k.flatten(), k_cache.flatten(), v_cache.flatten()])

    cached, streamed = both_paths(run)
    assert torch.equal(cached, streamed)
    # v's rows landed at their positions, untouched rows kept their old value.
    v_cache = streamed[-batch * hkv * s_max * d :].view(batch, hkv, s_max, d)
    for b in range(batch):
        assert torch.equal(v_cache[b, :, positions[b]], v[b].transpose(0, 1))
    mask = torch.ones(batch, s_max, dtype=torch.bool)
    for b in range(batch):
        mask[b, positions[b]] = False
    assert (v_cache.permute(0, 2, 1, 3)[mask] == 7.0).all()
