"""Per-dtype tolerances of kernel outputs against float32 references.

bfloat16 and float16 outputs are rounded once to 8 / 11 mantissa bits; a float32
reference fed the same rounded inputs differs by about one ulp of the output.
"""

import torch

TOL = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype=None, scale=1.0):
    """Compares in float32 with the tolerance of `dtype` (default: actual's), widened by scale."""
    tol = TOL[dtype or actual.dtype]
    torch.testing.assert_close(
        actual.float().cpu(), expected.float().cpu(), atol=tol["atol"] * scale, rtol=tol["rtol"] * scale
    )


def dtypes_for(device):
    return [torch.float32, torch.bfloat16] + ([torch.float16] if device == "cuda" else [])
