import subprocess
import sys

import pytest

import pyruntime


def run(*args, input=None):
    return subprocess.run([sys.executable, "-m", "pyruntime", *args], capture_output=True, text=True, input=input, timeout=600)


@pytest.mark.parametrize("cmd", [[], ["generate"], ["chat"], ["convert"]])
def test_help(cmd):
    r = run(*cmd, "--help")
    assert r.returncode == 0 and "usage: pyruntime" in r.stdout


def test_generate_prints_a_real_answer():
    r = run("generate", "What is the capital of France?", "-n", "20")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_chat_keeps_the_conversation():
    r = run("chat", "-n", "20", input="What is the capital of France?\nAnd of Germany?\n\n")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout and "Berlin" in r.stdout


def test_convert_writes_a_loadable_folder(tmp_path, gguf_path, llm):
    out = tmp_path / "smol"
    r = run("convert", str(gguf_path), str(out))
    assert r.returncode == 0, r.stderr
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / f).exists()
    converted = pyruntime.LLM(out, progress=False)
    assert converted.generate("Hello", max_new_tokens=8).token_ids == llm.generate("Hello", max_new_tokens=8).token_ids


def test_bad_model_is_a_clean_error():
    r = run("generate", "hi", "--model", "/nonexistent/model")
    assert r.returncode == 2
    assert "error" in r.stderr and "Traceback" not in r.stderr
