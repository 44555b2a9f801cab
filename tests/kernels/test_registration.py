"""The ops' registration (schemas, fake implementations, mutation annotations) checked by
torch.library.opcheck, and the op namespace is the one documented."""

import pytest
import torch

from pyruntime import ops
from tests.kernels import reference as ref


def cases():
    cache = ref.cos_sin_cache(32, 64)
    lens = torch.tensor([5, 9], dtype=torch.int32)
    yield "rms_norm", (torch.empty(3, 64), torch.randn(3, 64), torch.randn(64), 1e-6)
    yield "fused_add_rms_norm", (torch.randn(3, 64), torch.randn(3, 64), torch.randn(64), 1e-6)
    yield "rotary_embedding", (torch.tensor([1, 7]), torch.randn(2, 4, 64), torch.randn(2, 2, 64), cache, True)
    yield "rotary_embedding_and_cache", (
        torch.tensor([[3]]), torch.randn(1, 1, 4, 64), torch.randn(1, 1, 2, 64), torch.randn(1, 1, 2, 64),
        torch.zeros(1, 2, 8, 64), torch.zeros(1, 2, 8, 64), cache, True,
    )
    yield "silu_and_mul", (torch.empty(2, 16), torch.randn(2, 32))
    yield "gated_mlp", (torch.empty(2, 64), torch.randn(2, 64), torch.randn(96, 64), torch.randn(64, 48))
    yield "gqa_decode_attention", (
        torch.empty(2, 8, 64), torch.randn(2, 8, 64), torch.randn(2, 2, 16, 64), torch.randn(2, 2, 16, 64), lens, 0.125,
    )
    yield "prefill_attention", (
        torch.empty(5, 8, 64), torch.randn(5, 8, 64), torch.randn(2, 16, 64), torch.randn(2, 16, 64), 3, 0.125,
    )


@pytest.mark.parametrize("name,args", list(cases()), ids=[c[0] for c in cases()])
def test_opcheck(name, args):
    torch.library.opcheck(getattr(torch.ops.pyruntime, name).default, args)


def test_cpu_isa_reported():
    assert ops.cpu_isa() in {"avx512bf16", "avx512", "avx2", "scalar"}
