import pytest
import torch

from pyruntime import ops
from tests.kernels import reference as ref
from tests.tolerances import assert_close, dtypes_for


@pytest.mark.parametrize("inter", [1, 7, 64, 83, 1536, 5120 + 8, 14336])
@pytest.mark.parametrize("rows", [1, 4])
def test_silu_and_mul(device, store_path, rows, inter):
    for dtype in dtypes_for(device):
        x = torch.randn(rows, 2 * inter, dtype=dtype, device=device) * 4
        assert_close(ops.silu_and_mul(x), ref.silu_and_mul(x.cpu()))


def test_silu_and_mul_nd(device):
    x = torch.randn(2, 3, 2 * 96, device=device)
    out = ops.silu_and_mul(x)
    assert out.shape == (2, 3, 96)
    assert_close(out, ref.silu_and_mul(x.cpu()))


def test_silu_and_mul_matches_hf_llama_mlp(device):
    pytest.importorskip("transformers")
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    cfg = LlamaConfig(hidden_size=64, intermediate_size=160)
    mlp = LlamaMLP(cfg)
    x = torch.randn(3, 64)
    expected = mlp(x).detach()
    gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach()
    got = ops.gated_mlp(x.to(device), gate_up.to(device), mlp.down_proj.weight.detach().to(device))
    assert_close(got, expected, scale=5)


# (hidden, intermediate): SmolLM2, Phi-3 / Llama-3.2-3B-like, and odd sizes.
# Token counts cover the fused decode path (<= 16) and the GEMM path (> 16); the large
# shapes run with fewer token counts to keep the suite fast.
SMALL_SHAPES = [(64, 96), (83, 37), (576, 1536), (129, 515)]
LARGE_SHAPES = [(2048, 5632), (3072, 8192)]
MLP_CASES = [(t, h, i) for h, i in SMALL_SHAPES for t in (1, 2, 3, 5, 16, 17, 40)] + [
    (t, h, i) for h, i in LARGE_SHAPES for t in (1, 3)
]


@pytest.mark.parametrize("tokens,hidden,inter", MLP_CASES)
def test_gated_mlp(device, tokens, hidden, inter):
    for dtype in dtypes_for(device):
        x = torch.randn(tokens, hidden, dtype=dtype, device=device)
        gate_up = (torch.randn(2 * inter, hidden, device=device) / hidden**0.5).to(dtype)
        down = (torch.randn(hidden, inter, device=device) / inter**0.5).to(dtype)
        want = ref.gated_mlp(x.cpu(), gate_up.cpu(), down.cpu())
        # bf16 GEMM paths (tokens > 16) round the intermediate to bf16 as well.
        assert_close(ops.gated_mlp(x, gate_up, down), want, scale=2)
