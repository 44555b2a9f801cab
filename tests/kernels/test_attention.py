import pytest
import torch

from pyruntime import ops
from tests.kernels import reference as ref
from tests.tolerances import assert_close, dtypes_for

HEAD_DIMS = [64, 80, 96, 128, 256]
GROUP_RATIOS = [1, 2, 3, 4, 8]


def make_cache(batch, hkv, s_max, d, dtype, device):
    k = torch.randn(batch, hkv, s_max, d, dtype=dtype, device=device)
    v = torch.randn(batch, hkv, s_max, d, dtype=dtype, device=device)
    return k, v


@pytest.mark.parametrize("ratio", GROUP_RATIOS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_decode_attention_heads(device, head_dim, ratio):
    hkv = 2
    for dtype in dtypes_for(device):
        q = torch.randn(2, hkv * ratio, head_dim, dtype=dtype, device=device)
        k, v = make_cache(2, hkv, 300, head_dim, dtype, device)
        seq_lens = torch.tensor([300, 77], dtype=torch.int32, device=device)
        want = ref.decode_attention(q.cpu(), k.cpu(), v.cpu(), seq_lens.cpu())
        assert_close(ops.gqa_decode_attention(q, k, v, seq_lens), want)


@pytest.mark.parametrize("seq_len", [1, 2, 15, 16, 17, 63, 64, 65, 127, 128, 129, 193, 1000, 4097, 8192])
def test_decode_attention_seq_lens(device, seq_len):
    # Lengths around the key-block and split sizes, up to 8192, in a cache longer still.
    for dtype in dtypes_for(device):
        q = torch.randn(1, 32, 128, dtype=dtype, device=device)
        k, v = make_cache(1, 8, seq_len + 5, 128, dtype, device)
        seq_lens = torch.tensor([seq_len], dtype=torch.int32, device=device)
        want = ref.decode_attention(q.cpu(), k.cpu(), v.cpu(), seq_lens.cpu())
        assert_close(ops.gqa_decode_attention(q, k, v, seq_lens), want)


@pytest.mark.parametrize("batch", [1, 3, 8, 16])
def test_decode_attention_ragged_batch(device, batch):
    gen = torch.Generator().manual_seed(batch)
    lens = torch.randint(1, 1500, (batch,), generator=gen, dtype=torch.int32)
    for dtype in dtypes_for(device):
        q = torch.randn(batch, 9, 64, dtype=dtype, device=device)
        k, v = make_cache(batch, 3, 1500, 64, dtype, device)
        want = ref.decode_attention(q.cpu(), k.cpu(), v.cpu(), lens)
        assert_close(ops.gqa_decode_attention(q, k, v, lens.to(device)), want)


def test_decode_attention_unaligned_cache_views(device):
    # Contiguous caches that start one element into their storage (off 16-byte alignment).
    for dtype in dtypes_for(device):
        q = torch.randn(2, 8, 64, dtype=dtype, device=device)
        k, v = (torch.randn(1 + 2 * 2 * 200 * 64, dtype=dtype, device=device)[1:].view(2, 2, 200, 64)
                for _ in range(2))
        lens = torch.tensor([150, 200], dtype=torch.int32, device=device)
        want = ref.decode_attention(q.cpu(), k.cpu(), v.cpu(), lens)
        assert_close(ops.gqa_decode_attention(q, k, v, lens.to(device)), want)


def test_decode_attention_custom_scale_and_sdpa(device):
    q = torch.randn(1, 32, 128, device=device)
    k, v = make_cache(1, 8, 512, 128, torch.float32, device)
    lens = torch.tensor([512], dtype=torch.int32, device=device)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q.unsqueeze(2), k, v, scale=0.05, enable_gqa=True)
    assert_close(ops.gqa_decode_attention(q, k, v, lens, scale=0.05), sdpa.squeeze(2))


def test_decode_attention_ignores_cache_past_seq_len(device):
    q = torch.randn(1, 4, 64, device=device)
    k, v = make_cache(1, 4, 64, 64, torch.float32, device)
    lens = torch.tensor([10], dtype=torch.int32, device=device)
    first = ops.gqa_decode_attention(q, k, v, lens)
    k[:, :, 10:] = float("nan")
    v[:, :, 10:] = 1e30
    assert torch.equal(ops.gqa_decode_attention(q, k, v, lens), first)


def test_decode_attention_large_magnitudes_stay_finite(device):
    q = torch.randn(1, 8, 64, device=device) * 1e4
    k, v = make_cache(1, 2, 100, 64, torch.float32, device)
    k *= 1e4
    lens = torch.tensor([100], dtype=torch.int32, device=device)
    out = ops.gqa_decode_attention(q, k, v, lens)
    want = ref.decode_attention(q.cpu(), k.cpu(), v.cpu(), lens.cpu())
    assert torch.isfinite(want).all() and torch.isfinite(out).all()
    assert_close(out, want, scale=50)


@pytest.mark.parametrize("start_pos,tokens", [(0, 1), (0, 17), (5, 9), (0, 31), (1, 33), (100, 64), (63, 65),
                                             (300, 130)])
@pytest.mark.parametrize("heads", [(9, 3), (8, 8), (8, 1)])
def test_prefill_attention(device, start_pos, tokens, heads):
    hq, hkv = heads
    d, s_max = 64, 512
    end = start_pos + tokens
    for dtype in dtypes_for(device):
        q = torch.randn(tokens, hq, d, dtype=dtype, device=device)
        k = torch.randn(hkv, s_max, d, dtype=dtype, device=device)
        v = torch.randn(hkv, s_max, d, dtype=dtype, device=device)
        k[:, end:] = float("nan")  # past the chunk: never read
        v[:, end:] = float("nan")
        want = ref.causal_attention(q.cpu(), k[:, :end].cpu(), v[:, :end].cpu(), start_pos)
        assert_close(ops.prefill_attention(q, k, v, start_pos), want)


@pytest.mark.parametrize("ratio", GROUP_RATIOS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_prefill_attention_heads(device, head_dim, ratio):
    hkv, start_pos, tokens = 2, 40, 50
    for dtype in dtypes_for(device):
        q = torch.randn(tokens, hkv * ratio, head_dim, dtype=dtype, device=device)
        k = torch.randn(hkv, 128, head_dim, dtype=dtype, device=device)
        v = torch.randn(hkv, 128, head_dim, dtype=dtype, device=device)
        want = ref.causal_attention(q.cpu(), k[:, :90].cpu(), v[:, :90].cpu(), start_pos, scale=0.07)
        assert_close(ops.prefill_attention(q, k, v, start_pos, scale=0.07), want)
