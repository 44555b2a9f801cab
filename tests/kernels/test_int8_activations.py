"""The integer products of the block formats (csrc/cpu/linear_q8.h): activations quantized to 8
bits per group (pyruntime.formats.quantize_activations), then exact integer sums per block. Each
is checked against float64 torch over the same quantized activations and gguf's dequantized
weights, through the engine's own product (C.matrix_product) at every level this CPU runs, for
every decode token count's tile shapes; and the prompt chunks' GEMM (more than
C.max_row_tile_tokens tokens) against 8- or 16-bit activations where the level has it
(C.int8_prompt_products())."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import pyruntime

from pyruntime._ext import C
from pyruntime.formats import FORMATS, quantize_activations

from tests.kernels.test_gguf_formats import NATIVE_FORMATS, random_blocks

INT8_FORMATS = [name for name, f in FORMATS.items() if f.activation_group]


def reference(x: torch.Tensor, m: C.WeightMatrix, group: int | None, bits: int = 8):
    """(x, quantized to `bits` where group says so) @ W^T in float64, and the sum of the terms'
    magnitudes."""
    xq = (x if group is None else quantize_activations(x, group, bits)).double()
    w = FORMATS[m.format.name].dequantize(m).double()
    return xq @ w.T, xq.abs() @ w.abs().T


@pytest.mark.parametrize("fmt", NATIVE_FORMATS)
def test_activation_groups_name_the_engines_integer_formats(fmt):
    # formats.py's activation_group (the reference's switch) against what the engine does: a
    # decode product differs from the float32 one exactly where the format has integer products.
    gen = np.random.default_rng(3)
    m = random_blocks(fmt, 8, 256, gen)
    x = torch.from_numpy(gen.standard_normal((2, 256)).astype(np.float32))
    differs = not torch.equal(C.matrix_product(x, m, True), C.matrix_product(x, m, False))
    assert differs == (FORMATS[fmt].activation_group is not None)


@pytest.mark.parametrize("fmt", INT8_FORMATS)
@pytest.mark.parametrize("tokens", [1, 3, 4, 7, 16])
def test_integer_product_matches_quantized_reference(level, fmt, tokens):
    gen = np.random.default_rng(tokens)
    m = random_blocks(fmt, 22, 512, gen)
    x = torch.from_numpy(gen.standard_normal((tokens, 512)).astype(np.float32))
    x[0, :64] *= 20  # groups of very different ranges in one row
    if tokens > 1:
        x[1, 256:] = 0  # an all-zero group: scale 0
        x[1, :256] *= 1e-38  # groups too small for 127 / max|x| in float32: zeros
    want, mag = reference(x, m, FORMATS[fmt].activation_group)
    got = C.matrix_product(x, m, True).double()
    assert (got - want).abs().max() <= 1e-5 * mag.max()
    # int8_activations=False: float32 activations (the float path) against the unquantized x.
    want_f, mag_f = reference(x, m, None)
    got_f = C.matrix_product(x, m, False).double()
    assert (got_f - want_f).abs().max() <= 1e-5 * mag_f.max()
    # The quantization is visible: the two differ by more than the float rounding.
    assert (got - got_f).abs().max() > 1e-4 * mag.max()


@pytest.fixture(params=[1, 4], ids=["row-after-row", "rows-side-by-side"])
def decode_rows(request):
    """Both ways one token's integer product reads the weight rows (C.q8_decode_rows: one after
    another, the default on AMD CPUs, or four side by side and the 32-value formats a row per
    vector lane, the default elsewhere), whatever this CPU's default; restored afterwards."""
    C.set_q8_decode_rows(request.param)
    yield request.param
    C.set_q8_decode_rows(0)


@pytest.mark.parametrize("fmt", INT8_FORMATS)
def test_each_token_of_a_decode_call_equals_it_alone(level, fmt, decode_rows):
    # A decode call of n tokens (a step of n streams; on the SIMD levels the 32-value formats
    # share each decoded block among them, a row per vector lane) gives each token the very sums
    # it gets alone, however a lone token's product reads the rows.
    assert C.q8_decode_rows() == decode_rows
    gen = np.random.default_rng(11)
    m = random_blocks(fmt, 37, 512, gen)  # two groups of 16 rows and a part
    x = torch.from_numpy(gen.standard_normal((C.max_row_tile_tokens, 512)).astype(np.float32))
    alone = torch.cat([C.matrix_product(x[t:t + 1], m, True) for t in range(len(x))])
    want, mag = reference(x, m, FORMATS[fmt].activation_group)
    assert (alone.double() - want).abs().max() <= 1e-5 * mag.max()
    for n in range(2, len(x) + 1):
        assert torch.equal(C.matrix_product(x[:n], m, True), alone[:n]), n
        assert torch.equal(C.matrix_product(x[len(x) - n:], m, True), alone[len(x) - n:]), n


@pytest.mark.parametrize("fmt", INT8_FORMATS)
@pytest.mark.parametrize("cols", [576, 2048])
def test_a_lone_token_reads_rows_either_way_to_the_same_bits(level, fmt, cols):
    # One token (a decode step of one stream) through rows read one after another and four side
    # by side (the 32-value formats: a row per vector lane): the same bits, and both the
    # float64 reference's to 1e-5 of the terms' magnitudes. 576 values: 18 blocks of 32 (eight,
    # eight and two) or two and a quarter of 256 (k-quants take 512); rows past a multiple of 8.
    if FORMATS[fmt].activation_group == 256:
        cols = cols // 256 * 256
    gen = np.random.default_rng(cols)
    m = random_blocks(fmt, 45, cols, gen)
    x = torch.from_numpy(gen.standard_normal((1, cols)).astype(np.float32))
    x[0, :40] *= 30
    want, mag = reference(x, m, FORMATS[fmt].activation_group)
    got = {}
    try:
        for rows in (1, 4):
            C.set_q8_decode_rows(rows)
            got[rows] = C.matrix_product(x, m, True)
    finally:
        C.set_q8_decode_rows(0)
    assert (got[1].double() - want).abs().max() <= 1e-5 * mag.max()
    assert torch.equal(got[1], got[4])


def test_decode_rows_setting_is_checked():
    with pytest.raises(ValueError, match="rows must be 1, 4 or 0"):
        C.set_q8_decode_rows(2)
    assert C.q8_decode_rows() in (1, 4)


@pytest.mark.parametrize("value", ["4", "1", "3"])
def test_environment_variable_picks_the_decode_rows(value):
    code = ("import torch; from pyruntime._ext import C; from pyruntime import ops; "
            "ops.rms_norm(torch.ones(2, 64), torch.ones(64)); print(C.q8_decode_rows())")
    env = dict(os.environ, PYRUNTIME_Q8_DECODE_ROWS=value)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    if value in ("1", "4"):
        assert r.returncode == 0, r.stderr
        assert r.stdout.split()[-1] == value
    else:
        assert r.returncode != 0 and "PYRUNTIME_Q8_DECODE_ROWS=3: rows read at once must be 1 or 4" in r.stderr


def test_integer_gemm_is_at_avx2_and_where_the_level_has_vnni_without_amx(level):
    paths = pyruntime.cpu_features()["paths"]
    vnni = level.startswith("avx512") and paths["int8_vnni"] and not paths["bf16_amx"]
    assert C.int8_prompt_products() == (level == "avx2" or vnni)
    assert C.int16_prompt_products() == vnni
    assert paths["integer_gemm"] == [8] * C.int8_prompt_products() + [16] * C.int16_prompt_products()


@pytest.mark.parametrize("fmt", INT8_FORMATS)
@pytest.mark.parametrize("tokens,rows,cols", [(17, 1030, 256), (300, 56, 2560)], ids=["17x1030x256", "300x56x2560"])
def test_prompt_chunks_take_the_integer_gemm_where_the_level_has_it(level, fmt, tokens, rows, cols):
    # More than max_row_tile_tokens tokens (a prompt chunk's GEMM): 8-bit activations where
    # C.int8_prompt_products() (panels of 16 or 8 rows: 1030 and 56 end in partial ones at 16;
    # blocks of 8 or 4 tokens: 17 and 300 end in partial ones at 8), else float32; against float64 torch either way.
    gen = np.random.default_rng(7)
    m = random_blocks(fmt, rows, cols, gen)  # 1030 rows: many rows ahead prefetched by the decode path
    x = torch.from_numpy(gen.standard_normal((tokens, cols)).astype(np.float32))
    x[2, :64] *= 50  # groups of very different ranges in one row
    x[3, 128:] = 0  # all-zero groups
    x[4, :] *= 1e-38  # groups too small for 127 / max|x| in float32: zeros
    group = FORMATS[fmt].activation_group if C.int8_prompt_products() else None
    want, mag = reference(x, m, group)
    got = C.matrix_product(x, m, True).double()
    assert ((got - want).abs() <= 1e-5 * mag.max(dim=1, keepdim=True).values).all()
    # Every token as in a shorter chunk: its sums do not depend on the other tokens.
    assert torch.equal(C.matrix_product(x[:C.max_row_tile_tokens + 1], m, True).double(),
                       got[:C.max_row_tile_tokens + 1])
    if group is not None:  # the quantization is visible against float32 activations
        assert (got - C.matrix_product(x, m, False).double()).abs().max() > 1e-4 * mag.max()
    # Its first 16 tokens as one decode call: integer products, each token as it was alone.
    want_q, mag_q = reference(x[:16], m, FORMATS[fmt].activation_group)
    got_q = C.matrix_product(x[:16], m, True).double()
    assert (got_q - want_q).abs().max() <= 1e-5 * mag_q.max()
    assert torch.equal(C.matrix_product(x[5:6], m, True).double(), got_q[5:6])


@pytest.mark.parametrize("fmt", INT8_FORMATS)
@pytest.mark.parametrize("tokens,rows,cols", [(17, 1030, 256), (300, 56, 2560)], ids=["17x1030x256", "300x56x2560"])
def test_prompt_chunks_take_16_bit_activations_where_the_level_has_the_gemm(level, fmt, tokens, rows, cols):
    # The prompts' default (CpuEngine.prompt_bits 16): int16 activations per group of 32 where
    # C.int8_prompt_products(), else float32; against float64 torch either way, and within the
    # float32 products' rounding of float32 activations.
    gen = np.random.default_rng(9)
    m = random_blocks(fmt, rows, cols, gen)
    x = torch.from_numpy(gen.standard_normal((tokens, cols)).astype(np.float32))
    x[2, :64] *= 50
    x[3, 128:] = 0
    x[4, :] *= 1e-36  # 32767 / max|x| overflows (max|x| under ~9.6e-35): zeros
    group = 32 if C.int16_prompt_products() else None
    want, mag = reference(x, m, group, bits=16)
    got = C.matrix_product(x, m, False, 16).double()
    assert ((got - want).abs() <= 1e-5 * mag.max(dim=1, keepdim=True).values).all()
    assert torch.equal(C.matrix_product(x[:C.max_row_tile_tokens + 1], m, False, 16).double(),
                       got[:C.max_row_tile_tokens + 1])
    want_f, mag_f = reference(x, m, None)
    assert ((got - want_f).abs()[5:] <= 2e-5 * mag_f.max(dim=1, keepdim=True).values[5:]).all()
    # An inf among a token's activations: its sums come out NaN (as float32 activations' would
    # be inf or NaN), the other tokens' unchanged.
    x[6, 40] = float("inf")
    bad = C.matrix_product(x, m, False, 16)
    assert not bad[6].isfinite().any()
    assert torch.equal(bad[7:].double(), got[7:])


@pytest.mark.parametrize("fmt", INT8_FORMATS)
@pytest.mark.parametrize("bits", [8, 16])
def test_prompt_gemm_holds_every_weight_and_activation_at_its_largest(level, fmt, bits):
    # Every value byte of the blocks 0xff (Q8_0: 0x7f and 0x80, +127 and -128), so that each
    # weight is its format's largest integer, against tokens whose quantized activations are all
    # +127 (32767) or all -127: the integer sums' widest terms (the AVX2 kernels' int16 pair sums
    # among them) must not saturate or wrap.
    rows, cols = 24, 512
    gen = np.random.default_rng(11)
    got_rows = []
    for fill in ([0x7F, 0x80] if fmt == "q8_0" else [0xFF]):
        m = random_blocks(fmt, rows, cols, gen, fill=fill)
        x = torch.ones(C.max_row_tile_tokens + 3, cols)
        x[1::2] = -1
        x[2] *= 1e3
        has_gemm = C.int8_prompt_products() if bits == 8 else C.int16_prompt_products()
        group = (FORMATS[fmt].activation_group if bits == 8 else 32) if has_gemm else None
        want, mag = reference(x, m, group, bits=bits)
        got = (C.matrix_product(x, m, True) if bits == 8 else C.matrix_product(x, m, False, 16)).double()
        assert ((got - want).abs() <= 1e-5 * mag.max(dim=1, keepdim=True).values).all()
        got_rows.append(got)
    if fmt == "q8_0":  # +127 and -128 weights: the products differ in sign (and size)
        assert (got_rows[0][0] > 0).all() and (got_rows[1][0] < 0).all()


def test_matrix_product_checks_its_input():
    m = random_blocks("q4_0", 4, 64, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"x must be a float32 cpu \[tokens, 64\]"):
        C.matrix_product(torch.zeros(2, 32), m, True)
    with pytest.raises(ValueError, match="no tokens"):
        C.matrix_product(torch.zeros(0, 64), m, True)
