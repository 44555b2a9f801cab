"""Bounded-time fuzzing of the loaders: mutated safetensors, GGUF and config files either
load or raise ModelLoadError (a ValueError); never another exception, a crash or a hang."""

import json
import random
import shutil
import time

import pytest
import torch

import pyruntime
from pyruntime import ModelLoadError
from pyruntime.convert import convert_gguf
from tests.gguf_tiny import write_tiny_llama_gguf

transformers = pytest.importorskip("transformers")
BUDGET_S = 8.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, llm):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1)
    folder = tmp_path_factory.mktemp("fuzz-model")
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(llm.path / f, folder / f)
    return folder


def mutate(data: bytes, rng: random.Random, hot: int) -> bytes:
    """Flips, overwrites or truncates bytes, mostly within the first `hot` bytes (the header)."""
    b = bytearray(data)
    kind = rng.random()
    if kind < 0.15:
        return bytes(b[: rng.randrange(len(b))])
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(min(hot, len(b))) if rng.random() < 0.9 else rng.randrange(len(b))
        b[i] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256), b[i] ^ (1 << rng.randrange(8))])
    return bytes(b)


def fuzz(original: bytes, target, attempt, hot: int, seed: int):
    rng = random.Random(seed)
    deadline = time.monotonic() + BUDGET_S
    runs = outcomes = 0
    while time.monotonic() < deadline:
        target.write_bytes(mutate(original, rng, hot))
        try:
            attempt()
            outcomes += 1
        except ModelLoadError:
            outcomes += 1
        runs += 1
    target.write_bytes(original)
    assert runs >= 10 and outcomes == runs


def test_fuzz_safetensors(model_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    st = folder / "model.safetensors"
    header_len = int.from_bytes(st.read_bytes()[:8], "little") + 8
    fuzz(st.read_bytes(), st, lambda: pyruntime.LLM(folder, progress=False), header_len, seed=1)


def test_fuzz_config(model_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    cfg = folder / "config.json"
    original = cfg.read_bytes()
    fuzz(original, cfg, lambda: pyruntime.LLM(folder, progress=False), len(original), seed=2)
    # Well-formed JSON with wrong values too.
    rng = random.Random(3)
    base = json.loads(original)
    for _ in range(200):
        d = dict(base)
        key = rng.choice(sorted(d))
        d[key] = rng.choice([None, -1, 0, 1.5, "x", [], {}, True, 10**12])
        cfg.write_text(json.dumps(d))
        try:
            pyruntime.LLM(folder, progress=False, max_seq_len=64)
        except ModelLoadError:
            pass
        except ValueError as e:  # an argument check against a corrupted config (max_seq_len)
            assert "max_seq_len" in str(e) or "sliding_window" in str(e)


def test_fuzz_gguf(tmp_path):
    src = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    target = tmp_path / "fuzzed.gguf"
    original = src.read_bytes()
    fuzz(original, target, lambda: convert_gguf(target, tmp_path / "out", progress=False, dequantize=True), 16384,
         seed=4)


def _load_native(target, out):
    """The GGUF's metadata converted, its tensors mapped in their own types (dtype="gguf")."""
    convert_gguf(target, out, progress=False, link=True)
    try:
        pyruntime.LLM(out, max_seq_len=64, progress=False)
    except ValueError as e:
        if not isinstance(e, ModelLoadError):  # an argument check against corrupted metadata
            assert "max_seq_len" in str(e) or "sliding_window" in str(e), e


def test_fuzz_gguf_native(tmp_path):
    src = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    target = tmp_path / "fuzzed.gguf"
    fuzz(src.read_bytes(), target, lambda: _load_native(target, tmp_path / "out"), 16384, seed=5)


def _tensor_record(src, index, part):
    """Byte offset of part `part` ([name_len, name, n_dims, dims, type, offset]) of tensor `index`'s
    record in src's header, and the tensor."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    tensor = reader.tensors[index]
    return tensor.field.parts[part].ctypes.data - reader.data.ctypes.data, tensor


def test_gguf_bad_tensors_are_named(tmp_path):
    src = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    data = src.read_bytes()
    # Truncated: the last tensor's data cut short.
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:-100])
    with pytest.raises(ModelLoadError, match="tensor '.*' ends .* past the end of the file"):
        _load_native(cut, tmp_path / "out-cut")
    # A row length that is not a whole number of blocks: the embedding (rows of 64) retyped as
    # Q4_K (blocks of 256).
    offset, tensor = _tensor_record(src, 0, 4)
    assert int(tensor.shape[0]) == 64
    retyped = bytearray(data)
    retyped[offset : offset + 4] = (12).to_bytes(4, "little")
    bad = tmp_path / "retyped.gguf"
    bad.write_bytes(bytes(retyped))
    with pytest.raises(ModelLoadError, match=f"tensor '{tensor.name}' \\(Q4_K\\) has rows of 64 values"):
        _load_native(bad, tmp_path / "out-retyped")


def test_gguf_unknown_quantisation(tmp_path):
    src = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    import gguf

    reader = gguf.GGUFReader(str(src))
    tensor = reader.tensors[0]
    # The tensor-type field of the first tensor's info record, set to a value no GGUF type has.
    field = tensor.field
    type_part = field.parts[-2]  # [n_dims, name_len, name, dims..., type, offset]
    offset = type_part.ctypes.data - reader.data.ctypes.data
    data = bytearray(src.read_bytes())
    data[offset : offset + 4] = (250).to_bytes(4, "little")
    bad = tmp_path / "badtype.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=f"badtype.gguf: tensor '{tensor.name}' has unknown type id 250"):
        convert_gguf(bad, tmp_path / "out", progress=False)
