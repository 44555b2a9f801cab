"""`convert` on a Llama-2 style GGUF (sentencepiece vocabulary, F32/F16 tensors) written
here with the gguf package: tokenizer and logits against transformers reading the same file."""

import pytest
import torch

import pyruntime
from pyruntime.convert import convert_gguf
from tests.gguf_tiny import write_tiny_llama_gguf

gguf = pytest.importorskip("gguf")
spm = pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def spm_gguf(tmp_path_factory):
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama2.gguf")


@pytest.fixture(scope="module")
def converted(spm_gguf, tmp_path_factory):
    return convert_gguf(spm_gguf, tmp_path_factory.mktemp("out") / "tiny", progress=False)


TEXTS = ["Hello world!", "The quick brown fox", "  spaces  and\nnewlines", "unseen wörds ✓ 漢字", "12345", ""]


@pytest.mark.parametrize("text", TEXTS)
def test_sentencepiece_tokenizer_matches_transformers(spm_gguf, converted, text):
    ref = transformers.AutoTokenizer.from_pretrained(spm_gguf.parent, gguf_file=spm_gguf.name)
    ours = pyruntime.tokenizer.Tokenizer(converted)
    ids = ours.encode(text)
    assert ids == ref(text).input_ids
    assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)


def test_converted_logits_match_transformers(spm_gguf, converted):
    ref = transformers.AutoModelForCausalLM.from_pretrained(spm_gguf.parent, gguf_file=spm_gguf.name, dtype=torch.float32)
    llm = pyruntime.LLM(converted, kv_dtype="float32", progress=False)  # the file's F32 and F16 tensors
    ids = llm.tokenizer.encode("The quick brown fox jumps over the lazy dog.")
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0]
    assert (llm.logits(ids) - want).abs().max().item() < 1e-4


@pytest.mark.parametrize("text", ["Hello world!", "  spaces  and\nnewlines", "unseen wörds ✓", "12345"])
def test_sentencepiece_without_space_prefix_matches_sentencepiece(tmp_path, text):
    # A vocabulary trained without the dummy prefix (Gemma's), its file saying add_space_prefix
    # false: ids as sentencepiece itself gives them (after the BOS the file asks for).
    from tests.gguf_tiny import train_sentencepiece

    path = write_tiny_llama_gguf(tmp_path / "no-prefix.gguf", add_space_prefix=False)
    ours = pyruntime.tokenizer.Tokenizer(convert_gguf(path, tmp_path / "out", progress=False))
    proc = train_sentencepiece(add_dummy_prefix=False, processor=True)[3]
    ids = ours.encode(text)
    assert ids == [1] + proc.encode(text)
    assert ours.decode(ids, skip_special_tokens=True) == proc.decode(proc.encode(text))
