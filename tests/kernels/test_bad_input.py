"""Misuse of every op raises ValueError (or RuntimeError) naming the argument; never a crash."""

import pytest
import torch

from pyruntime import ops
from tests.kernels import reference as ref


def raises(match):
    return pytest.raises((ValueError, RuntimeError), match=match)


def test_rms_norm_bad_input():
    x, w = torch.randn(3, 64), torch.randn(64)
    with raises("weight.shape"):
        ops.rms_norm(x, torch.randn(65))
    with raises("dtype"):
        ops.rms_norm(x.double(), w.double())
    with raises("weight has dtype"):
        ops.rms_norm(x, w.bfloat16())
    with raises("x: dtype"):
        ops.rms_norm(x.long(), w)
    with raises("weight must have 1 dimensions"):
        ops.rms_norm(x, torch.randn(1, 64))
    with raises("x must be contiguous in its last dimension"):
        ops.rms_norm(torch.randn(64, 3).T, w)
    with raises("eps"):
        ops.rms_norm(x, w, eps=float("nan"))
    with raises("weight must be contiguous"):
        ops.rms_norm(x, torch.randn(128)[::2])
    with raises("hidden"):
        ops.rms_norm(torch.randn(3, 0), torch.randn(0))


def test_fused_add_rms_norm_bad_input():
    x, r, w = torch.randn(3, 64), torch.randn(3, 64), torch.randn(64)
    with raises("residual"):
        ops.fused_add_rms_norm(x, torch.randn(3, 65), w)
    with raises("residual has dtype"):
        ops.fused_add_rms_norm(x, r.bfloat16(), w)
    with raises("weight.shape"):
        ops.fused_add_rms_norm(x, r, torch.randn(63))


def test_rotary_bad_input():
    cache = ref.cos_sin_cache(16, 64)
    q, k = torch.randn(2, 4, 64), torch.randn(2, 2, 64)
    pos = torch.tensor([0, 1])
    with raises("positions must lie in"):
        ops.rotary_embedding(torch.tensor([0, 16]), q, k, cache)
    with raises("positions must lie in"):
        ops.rotary_embedding(torch.tensor([-1, 0]), q, k, cache)
    with raises("positions must be int64"):
        ops.rotary_embedding(pos.int(), q, k, cache)
    with raises("positions.shape"):
        ops.rotary_embedding(torch.tensor([0]), q, k, cache)
    with raises("cos_sin_cache must be float32"):
        ops.rotary_embedding(pos, q, k, cache.double())
    with raises("rot_dim"):
        ops.rotary_embedding(pos, q, k, ref.cos_sin_cache(16, 128))
    with raises("k.shape"):
        ops.rotary_embedding(pos, q, torch.randn(2, 2, 32), cache)
    with raises("q must have 3 dimensions"):
        ops.rotary_embedding(pos, q.view(2, -1), k, cache)
    with raises("k has dtype"):
        ops.rotary_embedding(pos, q, k.bfloat16(), cache)
    with raises("q must be contiguous in its last dimension"):
        ops.rotary_embedding(pos, torch.randn(2, 64, 4).transpose(1, 2), k, cache)


def test_rotary_and_cache_bad_input():
    cache = ref.cos_sin_cache(64, 64)
    q, k, v = torch.randn(1, 1, 4, 64), torch.randn(1, 1, 2, 64), torch.randn(1, 1, 2, 64)
    kc, vc = torch.zeros(1, 2, 8, 64), torch.zeros(1, 2, 8, 64)
    with raises("positions must lie in"):
        ops.rotary_embedding_and_cache(torch.tensor([[8]]), q, k, v, kc, vc, cache)
    with raises("k_cache.shape"):
        ops.rotary_embedding_and_cache(torch.tensor([[1]]), q, k, v, torch.zeros(1, 3, 8, 64), vc, cache)
    with raises("v_cache must be contiguous"):
        ops.rotary_embedding_and_cache(torch.tensor([[1]]), q, k, v, kc, torch.zeros(1, 2, 64, 8).transpose(2, 3), cache)
    with raises("v must have the shape"):
        ops.rotary_embedding_and_cache(torch.tensor([[1]]), q, k, torch.randn(1, 1, 3, 64), kc, vc, cache)
    with raises("positions.shape"):
        ops.rotary_embedding_and_cache(torch.tensor([[1, 2]]), q, k, v, kc, vc, cache)


def test_silu_and_mul_bad_input():
    with raises("must be even"):
        ops.silu_and_mul(torch.randn(2, 7))
    with raises("dtype"):
        ops.silu_and_mul(torch.randn(2, 8, dtype=torch.float64))


def test_gated_mlp_bad_input():
    x, gu, down = torch.randn(2, 64), torch.randn(192, 64), torch.randn(64, 96)
    with raises("gate_up_weight.shape"):
        ops.gated_mlp(x, torch.randn(192, 65), down)
    with raises("gate_up_weight.shape.0. must be even"):
        ops.gated_mlp(x, torch.randn(191, 64), down)
    with raises("down_weight.shape"):
        ops.gated_mlp(x, gu, torch.randn(64, 95))
    with raises("down_weight has dtype"):
        ops.gated_mlp(x, gu, down.bfloat16())
    with raises("x must be contiguous"):
        ops.gated_mlp(torch.randn(64, 2).T, gu, down)
    with raises("gate_up_weight must be contiguous"):
        ops.gated_mlp(x, torch.randn(64, 192).T, down)


def test_decode_attention_bad_input():
    q = torch.randn(2, 8, 64)
    k, v = torch.randn(2, 2, 16, 64), torch.randn(2, 2, 16, 64)
    lens = torch.tensor([16, 3], dtype=torch.int32)
    with raises("seq_lens must lie in"):
        ops.gqa_decode_attention(q, k, v, torch.tensor([17, 3], dtype=torch.int32))
    with raises("seq_lens must lie in"):
        ops.gqa_decode_attention(q, k, v, torch.tensor([0, 3], dtype=torch.int32))
    with raises("seq_lens must be int32"):
        ops.gqa_decode_attention(q, k, v, lens.long())
    with raises("seq_lens.shape"):
        ops.gqa_decode_attention(q, k, v, lens[:1])
    with raises("must be a multiple of num_kv_heads"):
        ops.gqa_decode_attention(q, torch.randn(2, 3, 16, 64), torch.randn(2, 3, 16, 64), lens)
    with raises("unsupported head size 48"):
        ops.gqa_decode_attention(torch.randn(2, 8, 48), torch.randn(2, 2, 16, 48), torch.randn(2, 2, 16, 48), lens)
    with raises("v_cache must have the shape"):
        ops.gqa_decode_attention(q, k, torch.randn(2, 2, 15, 64), lens)
    with raises("k_cache must be contiguous"):
        ops.gqa_decode_attention(q, torch.randn(2, 2, 64, 16).transpose(2, 3), v, lens)
    with raises("k_cache has dtype"):
        ops.gqa_decode_attention(q, k.bfloat16(), v, lens)
    with raises("k_cache.shape"):
        ops.gqa_decode_attention(q, torch.randn(3, 2, 16, 64), torch.randn(3, 2, 16, 64), lens)
    with raises("q must have 3 dimensions"):
        ops.gqa_decode_attention(q[0], k, v, lens)


def test_prefill_attention_bad_input():
    q = torch.randn(4, 8, 64)
    k, v = torch.randn(2, 16, 64), torch.randn(2, 16, 64)
    with raises("within the cache length"):
        ops.prefill_attention(q, k, v, start_pos=13)
    with raises("multiple of num_kv_heads"):
        ops.prefill_attention(torch.randn(4, 7, 64), k, v, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU to mix devices")
def test_mixed_devices_rejected():
    x = torch.randn(3, 64, device="cuda")
    with raises("weight is on"):
        ops.rms_norm(x, torch.randn(64))
