"""Broken model folders raise ModelLoadError (a ValueError) naming the file and tensor."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import pyruntime
from pyruntime import ModelLoadError

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def good(tmp_path_factory, llm):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    folder = tmp_path_factory.mktemp("good")
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(llm.path / f, folder / f)
    return folder


@pytest.fixture
def broken(good, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(good, folder)
    return folder


def edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (folder / "config.json").write_text(json.dumps(cfg))


def edit_tensors(folder, fn):
    tensors = load_file(folder / "model.safetensors")
    fn(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def load(folder):
    return pyruntime.LLM(folder, progress=False)


def test_good_folder_loads(good):
    assert load(good).config.num_layers == 1


def test_missing_config(broken):
    (broken / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="config.json"):
        load(broken)


def test_config_not_json(broken):
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="config.json.*JSON"):
        load(broken)


def test_config_field_missing(broken):
    edit_config(broken, hidden_size=None)
    with pytest.raises(ModelLoadError, match="hidden_size.*missing"):
        load(broken)


def test_config_field_wrong_type(broken):
    edit_config(broken, num_hidden_layers="two")
    with pytest.raises(ModelLoadError, match="num_hidden_layers.*int"):
        load(broken)


def test_unsupported_architecture(broken):
    edit_config(broken, architectures=["GPT2LMHeadModel"])
    with pytest.raises(ModelLoadError, match="GPT2LMHeadModel.*supported"):
        load(broken)


@pytest.mark.parametrize("changes, match", [
    (dict(layer_types=["chunked_attention"]), "layer_types.*chunked_attention.*not supported"),
    (dict(layer_types=["full_attention", "full_attention"]), "layer_types.*must list the 1 layers"),
    (dict(layer_types=["sliding_attention"]), "sliding_attention layers but no sliding_window"),
    (dict(layer_types=["sliding_attention"], sliding_window=0), "sliding_window.*must be positive"),
    (dict(layer_types=["sliding_attention"], sliding_window="wide"), "sliding_window.*must be int"),
])
def test_bad_sliding_window_config(broken, changes, match):
    edit_config(broken, **changes)
    with pytest.raises(ModelLoadError, match=match):
        load(broken)


def test_missing_tokenizer(broken):
    (broken / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="tokenizer.json"):
        load(broken)


def test_missing_weights(broken):
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        load(broken)


def test_truncated_safetensors(broken):
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        load(broken)


def test_garbage_safetensors(broken):
    (broken / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        load(broken)


def test_header_offsets_lie(broken):
    path = broken / "model.safetensors"
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    name = "model.layers.0.mlp.down_proj.weight"
    begin, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [begin + 10**9, end + 10**9]  # past the end of the file
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n :])
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        load(broken)


def test_tensor_missing(broken):
    edit_tensors(broken, lambda t: t.pop("model.layers.0.mlp.up_proj.weight"))
    with pytest.raises(ModelLoadError, match="model.safetensors.*model.layers.0.mlp.up_proj.weight.*missing"):
        load(broken)


def test_tensor_wrong_shape(broken):
    def shrink(t):
        t["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(16, 64)

    edit_tensors(broken, shrink)
    with pytest.raises(ModelLoadError, match="k_proj.weight.*shape"):
        load(broken)


def test_tensor_wrong_dtype(broken):
    def to_int(t):
        t["model.norm.weight"] = torch.ones(64, dtype=torch.int32)

    edit_tensors(broken, to_int)
    with pytest.raises(ModelLoadError, match="model.norm.weight.*dtype"):
        load(broken)


def test_unknown_model_name():
    with pytest.raises(ModelLoadError, match="bundled"):
        load("no-such-model")


@pytest.mark.parametrize("kwargs,match", [(dict(dtype="float64"), "dtype"), (dict(device="tpu"), "device"),
                                          (dict(threads=0), "threads"), (dict(max_seq_len=1), "max_seq_len"),
                                          (dict(max_seq_len=10**7), "max_seq_len")])
def test_bad_llm_arguments(good, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pyruntime.LLM(good, progress=False, **kwargs)


def test_gguf_not_a_gguf(tmp_path):
    from pyruntime.convert import convert_gguf

    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 20)
    with pytest.raises(ModelLoadError, match="x.gguf"):
        convert_gguf(bad, tmp_path / "out")


@pytest.mark.parametrize("weight_map", [[], {"model.norm.weight": 3}, {"model.norm.weight": "missing.safetensors"}])
def test_bad_sharded_index(broken, weight_map):
    (broken / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ModelLoadError, match="index.json|missing.safetensors"):
        load(broken)
