"""`pyruntime bench`'s bytes per decode token (the numerator of MBU) against a count from the
model's shapes: every weight once, of the embedding one row per token, the whole table only
where it is also the LM head (tied); plus K and V of every cached position."""

import shutil

import pytest
import torch

import pyruntime
from pyruntime import formats
from pyruntime.bench import decode_bytes_per_token, weight_bytes_read

transformers = pytest.importorskip("transformers")

CONTEXT = 100.5


def expected_weight_bytes(cfg, *, tied: bool, bias: bool, int8: bool = False) -> int:
    """Weights read for one token, from the shapes: matrices [rows, cols] float32 (int8: a byte
    each plus a float32 scale per group), norms and biases float32 as the CPU engine keeps them."""
    H, I, D, V = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.vocab_size
    Hq, Hkv = cfg.num_heads, cfg.num_kv_heads

    def matrix(rows, cols):
        if not int8:
            return rows * cols * 4
        return rows * cols + rows * (cols // formats.int8_group_size(cols)) * 4

    layer = (matrix((Hq + 2 * Hkv) * D, H) + matrix(H, Hq * D) + matrix(2 * I, H) + matrix(H, I)
             + 2 * H * 4 + (((Hq + 2 * Hkv) * D + H) * 4 if bias else 0))
    embed_row = matrix(V, H) // V
    lm_head = matrix(V, H)  # tied or not, the LM head reads its whole table
    assert tied or lm_head > embed_row
    return cfg.num_layers * layer + H * 4 + lm_head + embed_row


def kv_bytes(cfg, elem: int, context: float) -> float:
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * elem * context


def test_tied_smollm2(llm):
    cfg, spec = llm.config, llm.engine.spec
    assert spec.lm_head.data.data_ptr() == spec.embed.data.data_ptr()  # SmolLM2 ties its LM head to the embedding
    want = expected_weight_bytes(cfg, tied=True, bias=False)
    assert weight_bytes_read(spec) == want
    # The table once (as the LM head), plus the gathered row.
    assert want == llm.weight_bytes + cfg.hidden_size * 4
    assert decode_bytes_per_token(llm, CONTEXT) == want + kv_bytes(cfg, 4, CONTEXT)


@pytest.fixture(scope="module")
def untied_folder(tmp_path_factory, llm):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=128, intermediate_size=192, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   attention_bias=True, tie_word_embeddings=False)
    folder = tmp_path_factory.mktemp("untied")
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(llm.path / f, folder / f)
    return folder


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_untied_tiny_llama(untied_folder, dtype):
    tiny = pyruntime.LLM(untied_folder, dtype=dtype, progress=False)
    cfg, spec = tiny.config, tiny.engine.spec
    assert spec.lm_head.data.data_ptr() != spec.embed.data.data_ptr() and spec.layers[0].qkv_bias is not None
    want = expected_weight_bytes(cfg, tied=False, bias=True, int8=dtype == "int8")
    assert weight_bytes_read(spec) == want
    # The resident weights hold the whole embedding table; a token reads one row of it.
    embed = sum(t.numel() * t.element_size() for t in (spec.embed.data, spec.embed.scales) if t is not None)
    assert want == tiny.weight_bytes - embed + embed // cfg.vocab_size
    elem = 4 if dtype == "float32" else 2  # int8 keeps its KV cache in bfloat16
    assert decode_bytes_per_token(tiny, CONTEXT) == want + kv_bytes(cfg, elem, CONTEXT)
