"""GGUF block formats in the CPU engine: matrices of random, valid blocks of every format (the
bytes random, the scale fields set to sane float16 values) through the engine's products,
against the torch forward (pyruntime.reference) over the values gguf.quants.dequantize gives for
the same bytes; decode (linear) and prefill (GEMM) paths, at every level this CPU runs."""

import numpy as np
import pytest
import torch

from pyruntime import engine as engine_mod
from pyruntime._ext import C
from pyruntime.formats import FORMATS, GGUF_BLOCK_FORMATS
from pyruntime.reference import TorchReference


# ggml-common.h: values and bytes per block, and where each float16 field of a block sits with
# the magnitude it gets here (so that weights are ~0.05: qmax times the largest scale factor).
BLOCKS = {
    "q4_0": (32, 18, {0: 0.05 / 8}),
    "q4_1": (32, 20, {0: 0.05 / 15, 2: -0.02}),
    "q5_0": (32, 22, {0: 0.05 / 16}),
    "q5_1": (32, 24, {0: 0.05 / 31, 2: -0.02}),
    "q8_0": (32, 34, {0: 0.05 / 127}),
    "q2_k": (256, 84, {80: 0.05 / 45, 82: 0.05 / 45}),
    "q3_k": (256, 110, {108: 0.05 / 128}),
    "q4_k": (256, 144, {0: 0.05 / 945, 2: 0.05 / 945}),
    "q5_k": (256, 176, {0: 0.05 / 1953, 2: 0.05 / 1953}),
    "q6_k": (256, 210, {208: 0.05 / 1024}),
}


# The quantized block formats and f16 (GGUF's float16 rows, read by the engine in blocks of 32).
NATIVE_FORMATS = GGUF_BLOCK_FORMATS + ("f16",)


def random_blocks(fmt: str, rows: int, cols: int, gen: np.random.Generator, fill: int | None = None) -> C.WeightMatrix:
    """Random blocks of fmt with scales of its BLOCKS magnitude; fill: every other byte that value."""
    if fmt == "f16":  # float16 weights of ~0.05
        w = (0.05 * gen.standard_normal((rows, cols))).astype(np.float16)
        return C.WeightMatrix(C.WeightFormat.f16, torch.from_numpy(w.view(np.uint8)))
    values, nbytes, scales = BLOCKS[fmt]
    shape = (rows, cols // values, nbytes)
    blocks = gen.integers(0, 256, size=shape, dtype=np.uint8) if fill is None else np.full(shape, fill, np.uint8)
    for offset, magnitude in scales.items():
        d = (magnitude * gen.uniform(0.5, 1.0, size=(rows, cols // values))).astype(np.float16)
        blocks[:, :, offset : offset + 2] = d.view(np.uint8).reshape(rows, cols // values, 2)
    return C.WeightMatrix(getattr(C.WeightFormat, fmt), torch.from_numpy(blocks.reshape(rows, -1)))


def tiny_spec(formats: dict, H=256, I=512, V=96, seed=0) -> C.ModelSpec:
    """Two layers, 4 query / 2 KV heads of 64; formats: role -> format (float32 where absent)."""
    gen = np.random.default_rng(seed)
    tg = torch.Generator().manual_seed(seed)

    def mat(role, rows, cols):
        fmt = formats.get(role, "float32")
        if fmt == "float32":
            return C.WeightMatrix(C.WeightFormat.float32, torch.randn(rows, cols, generator=tg) * 0.05)
        return random_blocks(fmt, rows, cols, gen)

    def norm():
        return 1 + 0.1 * torch.randn(H, generator=tg)

    layers = [C.LayerSpec(attn_norm=norm(), q=mat("q", 256, H), k=mat("k", 128, H), v=mat("v", 128, H),
                          o=mat("o", H, 256), mlp_norm=norm(), gate=mat("gate", I, H), up=mat("up", I, H),
                          down=mat("down", H, I)) for _ in range(2)]
    inv = 1.0 / (10000.0 ** (torch.arange(0, 64, 2).float() / 64))
    ang = torch.arange(64).float()[:, None] * inv[None]
    return C.ModelSpec(architecture="LlamaForCausalLM", hidden=H, inter=I, num_heads=4, num_kv_heads=2, head_dim=64,
                       vocab=V, norm_eps=1e-5, attn_scale=0.125, rope_cos_sin=torch.cat([ang.cos(), ang.sin()], 1),
                       rotary_dim=64, rope_neox=True, embed=mat("embed", V, H), layers=layers, final_norm=norm(),
                       lm_head=mat("lm_head", V, H))


# Largest logit difference to the torch forward, relative to the largest logit: float32
# activations (sums in another order only), and 8-bit activations, where an activation that the
# two sides round to different integers (their float inputs differ by an ulp near a rounding
# boundary) moves the result by up to a quantization step; the integer products themselves are
# checked to 1e-5 in test_int8_activations.py.
MODEL_TOLERANCE = {False: 2e-4, True: 2e-2}


# Every format with float32 activations, and those with integer products with 8-bit ones.
CASES = [(fmt, False) for fmt in NATIVE_FORMATS] + [
    (fmt, True) for fmt in GGUF_BLOCK_FORMATS if FORMATS[fmt].activation_group]


@pytest.mark.parametrize("fmt,int8", CASES, ids=[f"{f}-{'int8' if i else 'float'}" for f, i in CASES])
def test_block_format_products_match_dequantized_reference(level, fmt, int8):
    # Every matrix in the format: embedding rows gathered, every projection, the LM head.
    spec = tiny_spec({role: fmt for role in ("embed", "q", "k", "v", "o", "gate", "up", "down", "lm_head")})
    eng = engine_mod.CpuEngine(spec, 64, torch.float32, 2, int8_activations=int8)
    assert eng.isa == level and eng.int8_activations == int8
    # The prompt's products: 16-bit activations by default, 8-bit ones with int8 here, where the
    # level has the integer GEMM for them (else float32).
    if int8:
        eng.prompt_bits = 8
    runs = (8 if C.int8_prompt_products() else 32) if int8 else (16 if C.int16_prompt_products() else 32)
    assert eng.prompt_bits == runs
    ref = TorchReference(spec, 64, torch.float32, int8_activations=int8, prompt_bits=eng.prompt_bits)
    tol = MODEL_TOLERANCE[int8]
    ids = torch.tensor([3, 17, 95, 0, 42, 7, 7, 60, 31, 2, 88, 15, 4, 9, 70, 23, 50, 1, 66, 12, 5, 33, 80, 44])
    # 24 tokens in one call (prefill, the GEMM path), then decode steps of one token (linear).
    want = ref.prefill(ids, 0, 0, all_logits=True)
    got = eng.prefill(ids, 0, 0, all_logits=True)
    scale = want.abs().max().item()
    assert scale > 0.1  # the random weights reach the logits
    torch.testing.assert_close(got, want, atol=tol * scale, rtol=0)
    for pos, tok in ((24, 11), (25, 93)):
        step_want = ref.decode(torch.tensor([tok]), torch.tensor([pos]))
        step_got = eng.decode(torch.tensor([tok]), torch.tensor([pos]))
        torch.testing.assert_close(step_got, step_want, atol=tol * scale, rtol=0)


@pytest.mark.parametrize("int8", [False, True], ids=["float-activations", "int8-activations"])
def test_mixed_block_formats_in_one_layer(int8):
    # As a Q4_K_M file mixes them: q, k in Q4_K, v and down in Q6_K, the LM head in Q8_0; gate
    # in Q5_1 (float activations) beside up in Q4_K (8-bit ones).
    spec = tiny_spec({"q": "q4_k", "k": "q4_k", "v": "q6_k", "o": "q4_k", "gate": "q5_1", "up": "q4_k",
                      "down": "q6_k", "embed": "q4_0", "lm_head": "q8_0"}, seed=1)
    eng = engine_mod.CpuEngine(spec, 64, torch.float32, 2, int8_activations=int8)
    eng.prompt_bits = 8 if int8 else 16
    ref = TorchReference(spec, 64, torch.float32, int8_activations=int8, prompt_bits=eng.prompt_bits)
    ids = torch.arange(5, 45)
    want = ref.prefill(ids, 0, 0, all_logits=True)
    got = eng.prefill(ids, 0, 0, all_logits=True)
    torch.testing.assert_close(got, want, atol=MODEL_TOLERANCE[int8] * want.abs().max().item(), rtol=0)
    assert spec.layers[0].v.nbytes == 128 * 256 // 256 * 210


@pytest.mark.parametrize("fmt", NATIVE_FORMATS)
def test_prompt_products_over_many_tokens_and_features(level, fmt):
    # A long prompt chunk through a wide matrix: the GEMM's blocks of tokens (19, the last one
    # partial), its pieces of the features (2560 = 1024 + 1024 + 512 on AMX tiles) and its blocks
    # of rows (56: two 16-row blocks side by side, one alone, 8 left over), against float64 torch
    # over gguf's dequantized weights, each sum to 1e-5 of its terms' magnitudes.
    gen = np.random.default_rng(11)
    m = random_blocks(fmt, 56, 2560, gen)
    x = torch.from_numpy(gen.standard_normal((300, 2560)).astype(np.float32))
    x[7, :512] *= 50  # one token of a much larger range
    w = FORMATS[fmt].dequantize(m).double()
    want, mag = x.double() @ w.T, x.double().abs() @ w.abs().T
    got = C.matrix_product(x, m, False).double()
    assert ((got - want).abs() <= 1e-5 * mag).all()
    # Every token as it is in a shorter chunk: its sums do not depend on the other tokens.
    assert torch.equal(C.matrix_product(x[:40], m, False).double(), got[:40])


@pytest.mark.parametrize("fmt", NATIVE_FORMATS)
def test_products_of_a_few_tokens_with_float_activations(level, fmt):
    # 1 to 16 tokens (a short prompt chunk, a decode step without 8-bit activations: the row
    # tiles, not the GEMM; over 4 tokens the rows are decoded once for all the tiles, over 10
    # (x past 40 KB) in panels of rows): 37 rows (blocks of 4 and one left over) against float64
    # torch over gguf's dequantized weights, and every token's sums the same bits whatever the
    # number of tokens beside it.
    gen = np.random.default_rng(5)
    m = random_blocks(fmt, 37, 1024, gen)
    x = torch.from_numpy(gen.standard_normal((16, 1024)).astype(np.float32))
    w = FORMATS[fmt].dequantize(m).double()
    want, mag = x.double() @ w.T, x.double().abs() @ w.abs().T
    alone = torch.cat([C.matrix_product(x[t : t + 1], m, False) for t in range(16)])
    assert ((alone.double() - want).abs() <= 1e-5 * mag).all()
    for n in (2, 4, 5, 8, 13, 16):
        assert torch.equal(C.matrix_product(x[:n], m, False), alone[:n]), n


@pytest.mark.parametrize("fmt", ["q4_k", "q8_0"])
def test_wide_mlp_adds_every_piece_into_the_residual(level, fmt):
    # An intermediate size of 2560: the down projection of a prompt chunk adds its sums into the
    # residual stream piece by piece of the features (AMX tiles) or at once (FMA).
    spec = tiny_spec({"gate": fmt, "up": fmt, "down": fmt}, I=2560, seed=2)
    eng = engine_mod.CpuEngine(spec, 64, torch.float32, 2)
    ref = TorchReference(spec, 64, torch.float32, prompt_bits=eng.prompt_bits)
    ids = torch.arange(3, 43)
    want = ref.prefill(ids, 0, 0, all_logits=True)
    got = eng.prefill(ids, 0, 0, all_logits=True)
    tol = MODEL_TOLERANCE[eng.prompt_bits == 8]
    torch.testing.assert_close(got, want, atol=tol * want.abs().max().item(), rtol=0)


@pytest.mark.parametrize("prompt_bits", [16, 8])
def test_engine_of_a_few_tokens_per_call_takes_the_gemm(monkeypatch, prompt_bits):
    # max_tokens of 9 to 16: a prompt call of more than C.prompt_gemm_tokens tokens takes the
    # GEMM (its panels and activations allocated for it), at the default prompt_bits and at 8.
    monkeypatch.setattr(engine_mod, "MAX_TOKENS", 12)
    spec = tiny_spec({"q": "q4_k", "k": "q4_k", "v": "q6_k", "o": "q4_0", "gate": "q8_0", "up": "q4_1",
                      "down": "q6_k"}, seed=3)
    eng = engine_mod.CpuEngine(spec, 64, torch.float32, 2, prompt_bits=prompt_bits)
    assert eng.max_tokens == 12
    ref = TorchReference(spec, 64, torch.float32, prompt_bits=eng.prompt_bits)
    ids = torch.arange(5, 17)  # one call of 12 tokens
    want = ref.prefill(ids, 0, 0, all_logits=True)
    got = eng.prefill(ids, 0, 0, all_logits=True)
    torch.testing.assert_close(got, want, atol=MODEL_TOLERANCE[eng.prompt_bits == 8] * want.abs().max().item(), rtol=0)


def test_decode_call_of_more_tokens_than_a_tile_at_every_level(level):
    # One engine call that is not a prompt, with more tokens than the decode products' tiles take
    # (C.Engine.forward accepts up to max_tokens): the GEMM, on 8-bit activations where the
    # level's GEMM has them, else float32; equal to decode steps in groups of 16 within the
    # 8-bit tolerance.
    spec = tiny_spec({"q": "q4_k", "k": "q4_0", "v": "q6_k", "o": "q8_0", "gate": "q4_1", "up": "q5_k",
                      "down": "q6_k", "lm_head": "q8_0"}, seed=4)
    eng = engine_mod.CpuEngine(spec, 64, torch.float32, 2)
    n = C.max_row_tile_tokens + 5
    eng.ensure_rows(2 * n)
    tokens, positions = torch.arange(3, 3 + n), torch.zeros(n, dtype=torch.int64)
    together = eng._forward(tokens, positions, torch.arange(n), 0, prompt=False)
    steps = eng.decode(tokens, positions, torch.arange(n, 2 * n))
    torch.testing.assert_close(together, steps, atol=MODEL_TOLERANCE[True] * steps.abs().max().item(), rtol=0)


def test_prompt_bits_are_checked():
    spec = tiny_spec({"q": "q4_k"})
    eng = engine_mod.CpuEngine(spec, 64, torch.float32, 1)
    for bad in (7, 64, True, "16"):
        with pytest.raises(ValueError, match="prompt_bits must be 8, 16 or 32"):
            eng.prompt_bits = bad
    with pytest.raises(ValueError, match="prompt_bits must be 8, 16 or 32, got 12"):
        eng.handle.prompt_bits = 12
    with pytest.raises(ValueError, match="prompt_bits must be 8, 16 or 32"):
        TorchReference(spec, 64, torch.float32, prompt_bits=4)
    with pytest.raises(ValueError, match="gemm_bits must be 16 or 32, got 8"):
        C.matrix_product(torch.zeros(20, 256), spec.layers[0].q, False, 8)


def test_block_matrix_shapes_are_checked():
    blocks = torch.zeros(4, 2 * 144, dtype=torch.uint8)
    m = C.WeightMatrix(C.WeightFormat.q4_k, blocks)
    assert m.shape == (4, 512) and m.nbytes == 4 * 288
    with pytest.raises(ValueError, match="whole blocks of 144 bytes"):
        C.WeightMatrix(C.WeightFormat.q4_k, torch.zeros(4, 100, dtype=torch.uint8))
    with pytest.raises(ValueError, match="Byte tensor"):
        C.WeightMatrix(C.WeightFormat.q8_0, torch.zeros(4, 34, dtype=torch.int8))
    with pytest.raises(ValueError, match="takes no scales"):
        C.WeightMatrix(C.WeightFormat.q8_0, torch.zeros(4, 34, dtype=torch.uint8), torch.ones(4, 1))
    # A matrix whose width is not the model's: named.
    bad = _with_down(tiny_spec({"down": "q4_k"}), C.WeightMatrix(C.WeightFormat.q4_k, torch.zeros(256, 144, dtype=torch.uint8)))
    with pytest.raises(ValueError, match="layers\\[0\\].down must be \\[256, 512\\]"):
        C.Engine(bad, 64, torch.float32, 1, 16)


def _with_down(spec, down):
    l0 = spec.layers[0]
    layer = C.LayerSpec(attn_norm=l0.attn_norm, q=l0.q, k=l0.k, v=l0.v, o=l0.o, mlp_norm=l0.mlp_norm, gate=l0.gate,
                        up=l0.up, down=down)
    kw = {k: getattr(spec, k) for k in ("architecture", "hidden", "inter", "num_heads", "num_kv_heads", "head_dim",
                                        "vocab", "norm_eps", "attn_scale", "rope_cos_sin", "rotary_dim", "rope_neox",
                                        "embed", "final_norm", "lm_head")}
    return C.ModelSpec(**kw, layers=[layer, spec.layers[1]])


@pytest.mark.parametrize("fmt", ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"])
def test_pack_with_gguf_quantizer_round_trips(fmt):
    # The 32-value formats quantize float weights with the gguf package's own quantizer; the
    # values the engine then holds are that quantizer's dequantized ones.
    w = torch.randn(64, 96) * 0.1
    m = FORMATS[fmt].pack(w)
    assert m.shape == (64, 96) and m.format == getattr(C.WeightFormat, fmt)
    back = FORMATS[fmt].dequantize(m)
    bits = {"q4_0": 4, "q4_1": 4, "q5_0": 5, "q5_1": 5, "q8_0": 8}[fmt]
    step = w.abs().amax() * 2 / (2**bits - 1)
    assert (back - w).abs().max() <= step  # within one quantization step
    with pytest.raises(ValueError, match="cannot quantize"):
        FORMATS["q4_k"].pack(w)
