"""The CUDA ops on a GPU other than the current one, and decode attention's empty and zero-length
inputs on CUDA (a clear error or an empty result, never NaN). They run where torch sees a GPU
and pyruntime was built with CUDA."""

import pytest
import torch

from pyruntime import ops
from pyruntime._ext import C
from tests.kernels import reference as ref
from tests.tolerances import assert_close

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and getattr(C, "with_cuda", False)),
                                reason="needs a CUDA GPU and a CUDA build of pyruntime")


@pytest.fixture
def last_gpu():
    """The last GPU, with the first one current (with one GPU, both are cuda:0)."""
    with torch.cuda.device(0):
        yield torch.device("cuda", torch.cuda.device_count() - 1)
        assert torch.cuda.current_device() == 0


def test_ops_on_the_last_device(last_gpu):
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(7, 769, generator=gen), torch.randn(769, generator=gen)
    got = ops.rms_norm(x.to(last_gpu), w.to(last_gpu))
    assert got.device == last_gpu
    assert_close(got, ref.rms_norm(x, w))

    q = torch.randn(3, 8, 64, generator=gen)
    k, v = torch.randn(3, 2, 83, 64, generator=gen), torch.randn(3, 2, 83, 64, generator=gen)
    lens = torch.tensor([1, 40, 83], dtype=torch.int32)
    got = ops.gqa_decode_attention(q.to(last_gpu), k.to(last_gpu), v.to(last_gpu), lens.to(last_gpu))
    assert_close(got, ref.decode_attention(q, k, v, lens))


@pytest.mark.parametrize("lens", [[0, 0], [5, 0]])
def test_decode_attention_zero_seq_len_raises(last_gpu, lens):
    q = torch.randn(2, 8, 64, device=last_gpu, dtype=torch.bfloat16)
    k = torch.randn(2, 2, 16, 64, device=last_gpu, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="seq_lens must lie in \\[1, 17\\)"):
        ops.gqa_decode_attention(q, k, k.clone(), torch.tensor(lens, dtype=torch.int32, device=last_gpu))


def test_decode_attention_empty_batch(last_gpu):
    q = torch.randn(0, 8, 64, device=last_gpu, dtype=torch.bfloat16)
    k = torch.randn(0, 2, 16, 64, device=last_gpu, dtype=torch.bfloat16)
    out = ops.gqa_decode_attention(q, k, k.clone(), torch.zeros(0, dtype=torch.int32, device=last_gpu))
    assert out.shape == (0, 8, 64) and out.device == last_gpu
