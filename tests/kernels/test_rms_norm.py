import pytest
import torch

from pyruntime import ops
from tests.kernels import reference as ref
from tests.tolerances import assert_close, dtypes_for

HIDDEN = [1, 7, 64, 83, 576, 769, 2048, 3072, 4096, 5120 + 8]
ROWS = [1, 3, 17]


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("rows", ROWS)
def test_rms_norm(device, store_path, rows, hidden):
    for dtype in dtypes_for(device):
        x = torch.randn(rows, hidden, dtype=dtype, device=device)
        w = torch.randn(hidden, dtype=dtype, device=device)
        assert_close(ops.rms_norm(x, w, eps=1e-5), ref.rms_norm(x.cpu(), w.cpu(), eps=1e-5))


def test_rms_norm_matches_hf_llama_rmsnorm(device):
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(576, eps=1e-5)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(2, 5, 576)
    expected = norm(x)
    got = ops.rms_norm(x.to(device), norm.weight.detach().to(device), eps=1e-5)
    assert got.shape == x.shape
    assert_close(got, expected)


@pytest.mark.parametrize("hidden", [64, 83, 4096])
def test_rms_norm_strided_rows(device, store_path, hidden):
    base = torch.randn(9, hidden * 2, device=device)
    x = base[::2, :hidden]  # row stride 4 * hidden, last dim contiguous
    w = torch.randn(hidden, device=device)
    assert_close(ops.rms_norm(x, w), ref.rms_norm(x.cpu(), w.cpu()))


@pytest.mark.parametrize("hidden", HIDDEN)
def test_fused_add_rms_norm(device, hidden):
    for dtype in dtypes_for(device):
        x = torch.randn(5, hidden, dtype=dtype, device=device)
        residual = torch.randn(5, hidden, dtype=dtype, device=device)
        w = torch.randn(hidden, dtype=dtype, device=device)
        want_residual = (x.float() + residual.float()).to(dtype)
        want_x = ref.rms_norm(want_residual.cpu(), w.cpu())
        ops.fused_add_rms_norm(x, residual, w)
        assert_close(residual, want_residual)
        assert_close(x, want_x)


def test_rms_norm_3d_input(device):
    x = torch.randn(2, 3, 576, device=device)
    w = torch.randn(576, device=device)
    assert_close(ops.rms_norm(x, w), ref.rms_norm(x.cpu(), w.cpu()))
