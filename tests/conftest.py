"""Shared fixtures: the device grid of the kernel tests; the bundled SmolLM2 loaded by pyruntime
and transformers' own loading of the same GGUF file (the independent reference)."""

import pytest
import torch

import pyruntime
from pyruntime import models

MODEL = "smollm2-135m-instruct"

CUDA = torch.cuda.is_available()


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA GPU"))])
def device(request):
    return request.param



@pytest.fixture(params=["cached", "streaming"])
def store_path(request, device):
    """The two ways the CPU kernels write a large output: ordinary stores, and streaming stores
    (taken here for every size, so that small tensors with unaligned rows go through it too)."""
    from pyruntime._ext import C as _C

    if request.param == "streaming":
        if device != "cpu":
            pytest.skip("streaming stores are a CPU path")
        _C.set_streaming_store_threshold(0)
    else:
        _C.set_streaming_store_threshold(1 << 62)
    yield request.param
    _C.set_streaming_store_threshold(-1)


@pytest.fixture(scope="session")
def llm():
    return pyruntime.LLM(MODEL, dtype="float32", progress=False)


@pytest.fixture(scope="session")
def llm_bf16():
    return pyruntime.LLM(MODEL, dtype="bfloat16", progress=False)


@pytest.fixture(scope="session")
def gguf_path():
    return models.bundled_gguf(MODEL)


@pytest.fixture(scope="session")
def hf_model(gguf_path):
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def hf_tokenizer(llm):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(llm.path)


@pytest.fixture(scope="session")
def hf_gguf_tokenizer(gguf_path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)


@pytest.fixture(scope="session")
def llm_int8():
    return pyruntime.LLM(MODEL, dtype="int8", progress=False)
