import pytest
import torch

from pyruntime import ops
from tests.kernels import reference as ref
from tests.tolerances import assert_close, dtypes_for

# (num_q_heads, num_kv_heads): MHA, GQA and MQA pairs of real models.
HEADS = [(9, 3), (32, 8), (40, 40), (64, 8), (8, 1)]
HEAD_DIMS = [64, 80, 96, 128, 256]


@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("heads", HEADS)
def test_rotary_embedding(device, heads, head_dim, is_neox):
    hq, hkv = heads
    cache = ref.cos_sin_cache(2048, head_dim).to(device)
    for dtype in dtypes_for(device):
        tokens = 7
        positions = torch.randint(0, 2048, (tokens,), device=device)
        q = torch.randn(tokens, hq, head_dim, dtype=dtype, device=device)
        k = torch.randn(tokens, hkv, head_dim, dtype=dtype, device=device)
        want_q = ref.rotary(q.cpu(), positions.cpu(), cache.cpu(), is_neox)
        want_k = ref.rotary(k.cpu(), positions.cpu(), cache.cpu(), is_neox)
        ops.rotary_embedding(positions, q, k, cache, is_neox)
        assert_close(q, want_q)
        assert_close(k, want_k)


@pytest.mark.parametrize("rot_dim", [16, 32, 64])
def test_partial_rotary(device, rot_dim):
    cache = ref.cos_sin_cache(512, rot_dim).to(device)
    positions = torch.tensor([0, 5, 511, 100], device=device)
    q = torch.randn(4, 6, 96, device=device)
    k = torch.randn(4, 2, 96, device=device)
    want_q = ref.rotary(q.cpu(), positions.cpu(), cache.cpu())
    want_k = ref.rotary(k.cpu(), positions.cpu(), cache.cpu())
    ops.rotary_embedding(positions, q, k, cache)
    assert_close(q, want_q)
    assert_close(k, want_k)
    # Features past rot_dim are untouched.
    assert torch.equal(q[..., rot_dim:].cpu(), want_q[..., rot_dim:])


def test_rotary_matches_hf_llama(device):
    transformers = pytest.importorskip("transformers")
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    cfg = LlamaConfig(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0)
    rope = LlamaRotaryEmbedding(cfg)
    t, d = 11, 64
    positions = torch.arange(3, 3 + t)
    q = torch.randn(1, 9, t, d)
    k = torch.randn(1, 3, t, d)
    cos, sin = rope(q, positions[None])
    want_q, want_k = apply_rotary_pos_emb(q, k, cos, sin)
    cache = ref.cos_sin_cache(64, d, base=100000.0).to(device)
    q2 = q[0].transpose(0, 1).contiguous().to(device)
    k2 = k[0].transpose(0, 1).contiguous().to(device)
    ops.rotary_embedding(positions.to(device), q2, k2, cache)
    assert_close(q2, want_q[0].transpose(0, 1))
    assert_close(k2, want_k[0].transpose(0, 1))


def test_rotary_strided_views_of_fused_qkv(device):
    # q and k as views into one fused projection [T, (Hq + 2 Hkv) * D], as a runtime has them.
    t, hq, hkv, d = 5, 8, 2, 64
    qkv = torch.randn(t, (hq + 2 * hkv) * d, device=device)
    q = qkv[:, : hq * d].view(t, hq, d)
    k = qkv[:, hq * d : (hq + hkv) * d].view(t, hkv, d)
    v_before = qkv[:, (hq + hkv) * d :].clone()
    cache = ref.cos_sin_cache(128, d).to(device)
    positions = torch.arange(t, device=device) * 3
    want_q = ref.rotary(q.cpu(), positions.cpu(), cache.cpu())
    want_k = ref.rotary(k.cpu(), positions.cpu(), cache.cpu())
    ops.rotary_embedding(positions, q, k, cache)
    assert_close(q, want_q)
    assert_close(k, want_k)
    assert torch.equal(qkv[:, (hq + hkv) * d :], v_before)


@pytest.mark.parametrize("batch,tokens", [(1, 1), (4, 1), (1, 13), (3, 5)])
@pytest.mark.parametrize("heads", [(9, 3), (32, 8)])
@pytest.mark.parametrize("d", [64, 80])
def test_rotary_embedding_and_cache(device, store_path, batch, tokens, heads, d):
    hq, hkv = heads
    s_max = 64
    cache = ref.cos_sin_cache(256, d).to(device)
    for dtype in dtypes_for(device):
        positions = torch.stack([torch.randperm(s_max)[:tokens] for _ in range(batch)]).to(device)
        q = torch.randn(batch, tokens, hq, d, dtype=dtype, device=device)
        k = torch.randn(batch, tokens, hkv, d, dtype=dtype, device=device)
        v = torch.randn(batch, tokens, hkv, d, dtype=dtype, device=device)
        k_cache = torch.zeros(batch, hkv, s_max, d, dtype=dtype, device=device)
        v_cache = torch.zeros_like(k_cache)
        flat = positions.reshape(-1).cpu()
        want_q = ref.rotary(q.reshape(-1, hq, d).cpu(), flat, cache.cpu()).view(batch, tokens, hq, d)
        want_k = ref.rotary(k.reshape(-1, hkv, d).cpu(), flat, cache.cpu()).view(batch, tokens, hkv, d)
        want_kc = torch.zeros(batch, hkv, s_max, d)
        want_vc = torch.zeros(batch, hkv, s_max, d)
        for b in range(batch):
            for t in range(tokens):
                want_kc[b, :, positions[b, t]] = want_k[b, t]
                want_vc[b, :, positions[b, t]] = v[b, t].float().cpu()
        ops.rotary_embedding_and_cache(positions, q, k, v, k_cache, v_cache, cache)
        assert_close(q, want_q)
        assert_close(k, want_k)
        assert_close(k_cache, want_kc)
        assert_close(v_cache, want_vc)
