"""llm.engine: one interface over the engines, the KV cache it owns read back in the public
layout, and the Python-sequenced reference forward agreeing with the compiled engine."""

import pytest
import torch

import pyruntime
from pyruntime.engine import CpuEngine
from pyruntime.formats import FORMATS
from pyruntime.reference import TorchReference
from pyruntime.spec import build_spec
from pyruntime.weights import load_weights

MODEL = "smollm2-135m-instruct"
TEXT = "The history of every river is a story of water, stone and time, and of the people who lived by it."


def _reference(llm, dtype):
    weights = load_weights(llm.path, llm.config, dtype, progress=False)
    fmt = FORMATS[str(dtype).removeprefix("torch.")]
    return TorchReference(build_spec(llm.config, weights, fmt, llm.max_seq_len, dtype), llm.max_seq_len, dtype)


@pytest.mark.parametrize("dtype,max_seq_len,tol", [
    ("float32", 256, 2e-4),   # key tiles (256 is a multiple of 16)
    ("float32", 250, 2e-4),   # key rows
    ("bfloat16", 256, 3e-2),  # bf16 key tiles: pairs of features side by side
])
def test_kv_accessor_public_layout(dtype, max_seq_len, tol):
    llm = pyruntime.LLM(MODEL, dtype=dtype, max_seq_len=max_seq_len, progress=False)
    assert isinstance(llm.engine, CpuEngine)
    ids = llm.tokenizer.encode(TEXT)
    llm.logits(ids)
    ref = _reference(llm, llm.kv_dtype)
    ref.prefill(torch.tensor(ids), 0, 0, all_logits=True)
    n = len(ids)
    # bfloat16: the first layer only (the reference rounds activations to bfloat16 between ops,
    # the engine keeps them in float32, so deeper layers drift apart by more than the layout).
    for layer in (0,) if dtype == "bfloat16" else (0, llm.config.num_layers - 1):
        k, v = llm.engine.kv(layer)
        rk, rv = ref.kv(layer)
        assert k.shape == rk.shape == (1, llm.config.num_kv_heads, max_seq_len, llm.config.head_dim)
        scale = rk[:, :, :n].abs().max().item()
        torch.testing.assert_close(k[:, :, :n].float(), rk[:, :, :n].float(), atol=tol * scale, rtol=0)
        torch.testing.assert_close(v[:, :, :n].float(), rv[:, :, :n].float(), atol=tol * rv.abs().max().item(), rtol=0)
    with pytest.raises(ValueError, match="layer must be an int"):
        llm.engine.kv(llm.config.num_layers)


def test_reference_forward_agrees_with_the_engine(llm):
    ids = llm.tokenizer.encode(TEXT)
    ref = _reference(llm, torch.float32)
    ref.ensure_rows(2)
    want = ref.prefill(torch.tensor(ids), 0, 0, all_logits=True)
    got = llm.logits(ids)
    torch.testing.assert_close(got, want, atol=2e-3 * want.abs().max().item(), rtol=0)
    # Decode steps too: two sequences at their own positions.
    ref.prefill(torch.tensor(ids[:5]), 1, 0)
    step = ref.decode(torch.tensor([ids[-1], ids[5]]), torch.tensor([len(ids), 5]))
    llm.engine.ensure_rows(2)
    llm.engine.prefill(torch.tensor(ids), 0, 0)
    llm.engine.prefill(torch.tensor(ids[:5]), 1, 0)
    got_step = llm.engine.decode(torch.tensor([ids[-1], ids[5]]), torch.tensor([len(ids), 5]))
    torch.testing.assert_close(got_step, step, atol=2e-3 * step.abs().max().item(), rtol=0)


def test_a_prompt_after_its_cached_prefix_keeps_float_activations():
    # A prompt's last few tokens prefilled after its cached prefix go through the decode-sized
    # products, but as a prompt: float32 activations, the logits of one whole prefill to the
    # float rounding. The same tokens as decode steps take the 8-bit activations: visibly apart.
    llm = pyruntime.LLM(MODEL, progress=False)  # its own: the rows below are not its cached ones
    eng, ids = llm.engine, torch.tensor(llm.tokenizer.encode(TEXT))
    n = len(ids)
    eng.ensure_rows(3)
    whole = eng.prefill(ids, 0, 0, all_logits=True)[-5:]
    eng.prefill(ids[:-5], 1, 0)
    tail = eng.prefill(ids[-5:], 1, n - 5, all_logits=True)
    eng.prefill(ids[:-5], 2, 0)
    steps = torch.cat([eng.decode(ids[i : i + 1], torch.tensor([i]), torch.tensor([2])) for i in range(n - 5, n)])
    scale = whole.abs().max()
    apart = lambda a: ((a - whole).abs().max() / scale).item()  # noqa: E731
    # (Measured: 4e-4, from the bfloat16 cache and the whole prompt's AMX products, against 2.6e-2.)
    assert apart(tail) < 3e-3 and apart(steps) > 8e-3, (apart(tail), apart(steps))


@pytest.mark.parametrize("bits", [16, 8, 32])
def test_prompt_chunks_of_several_rows_share_calls_and_equal_each_alone(bits):
    # prefill_many: 22 prompts' chunks (over C.prompt_gemm_tokens = 8 tokens: the GEMM, and over
    # 16 the causal attention per chunk, else attention token by token; at most 8: the row
    # tiles, with 8-bit activations the decode products over more tokens than their tiles hold;
    # more than 16 chunks wanting logits: split over calls), some after a cached prefix, two
    # without logits: each chunk's K/V and logits bitwise those of its own prefill call, at every
    # prompt_bits.
    llm = pyruntime.LLM(MODEL, progress=False, prompt_bits=bits)
    if llm.engine.prompt_bits != bits:  # the level lacks that GEMM: the same path as another case
        pytest.skip(f"prompt_bits={bits} runs as {llm.engine.prompt_bits} at this CPU level: that case covers it")
    eng, ids = llm.engine, llm.tokenizer.encode(" ".join([TEXT] * 12))
    lengths = [40, 9, 23, 16, 5, 30, 12, 17] + [3 + i % 7 for i in range(14)]
    k = len(lengths)
    eng.ensure_rows(2 * k)
    starts = [3 * (i % 4) for i in range(k)]
    chunks = [torch.tensor(ids[sum(lengths[:i]) : sum(lengths[: i + 1])]) for i in range(k)]
    for i, p in enumerate(starts):
        if p:  # the cached prefix, in both copies
            for row in (i, k + i):
                eng.prefill(torch.tensor(ids[-p:]), row, 0)
    want = [i not in (2, 9) for i in range(k)]
    together = eng.prefill_many([(c, i, p, w) for i, (c, p, w) in enumerate(zip(chunks, starts, want))])
    for i, (c, p, w) in enumerate(zip(chunks, starts, want)):
        alone = eng.prefill(c, k + i, p)
        if w:
            assert torch.equal(together[i], alone), i
        else:
            assert together[i] is None
    for layer in range(llm.config.num_layers):
        for t in eng.kv(layer):
            for i, (p, c) in enumerate(zip(starts, chunks)):
                assert torch.equal(t[i, :, : p + len(c)], t[k + i, :, : p + len(c)]), (layer, i)


def test_engine_facts(llm):
    eng = llm.engine
    assert eng.threads == llm.threads
    assert eng.isa == pyruntime.cpu_features()["isa"]
    assert llm.weight_bytes == eng.weight_bytes > 0
