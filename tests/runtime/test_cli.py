import json
import os
import subprocess
import sys
import time

import pytest
import torch

import pyruntime


def run(*args, input=None):
    return subprocess.run([sys.executable, "-m", "pyruntime", *args], capture_output=True, text=True, input=input, timeout=600)


@pytest.mark.parametrize("cmd", [[], ["generate"], ["chat"], ["convert"], ["bench"], ["profile"]])
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
    # By default the folder keeps the GGUF file (its tensor types); --dequantize writes float32.
    out, flat = tmp_path / "smol", tmp_path / "smol-f32"
    for args in ((str(gguf_path), str(out)), (str(gguf_path), str(flat), "--dequantize")):
        r = run("convert", *args)
        assert r.returncode == 0, r.stderr
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / f).exists() and (flat / f).exists()
    assert (out / "model.gguf").read_bytes() == gguf_path.read_bytes() and not (out / "model.safetensors").exists()
    assert (flat / "model.safetensors").exists() and not (flat / "model.gguf").exists()
    native = pyruntime.LLM(out, progress=False)
    assert native.dtype == "gguf"
    want = pyruntime.LLM(gguf_path, progress=False).generate("Hello", max_new_tokens=8).token_ids
    assert native.generate("Hello", max_new_tokens=8).token_ids == want
    converted = pyruntime.LLM(flat, progress=False)
    assert converted.dtype == "float32"
    assert converted.generate("Hello", max_new_tokens=8).token_ids == llm.generate("Hello", max_new_tokens=8).token_ids


def test_bench_reports_latency_mbu_and_kv_cache(tmp_path, llm):
    out = tmp_path / "bench.json"
    r = run("bench", "--dtype", "float32", "--prompt-tokens", "16", "--new-tokens", "8", "--reps", "1", "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert "TPOT p50/p90/p99" in r.stdout and "MBU" in r.stdout and "KV cache" in r.stdout
    report = json.loads(out.read_text())
    assert report["kv_cache_bytes"] == llm.kv_cache_bytes
    assert report["weight_bytes"] == llm.weight_bytes
    assert 0 < report["tpot_ms_p50"] <= report["tpot_ms_p90"] <= report["tpot_ms_p99"]
    assert 0 < report["mbu"] < 2 and report["read_bandwidth_gbps"] > 0
    want = report["bytes_per_token"] * report["decode_tokens_per_s"] / (report["read_bandwidth_gbps"] * 1e9)
    assert abs(report["mbu"] - want) < 1e-9
    assert report["other_cpu_cores"] >= 0 and report["steal_cpu_cores"] >= 0 and "other processes" in r.stdout


def test_cpu_contention_counts_other_processes_not_this_one():
    """bench's CpuContention: a child process spinning through the whole block shows up as
    the CPU time the child itself got (read from its own /proc/<pid>/stat, so a host that
    steals time from the child does not fail the test); the same spinning in this process
    does not show up."""
    from pyruntime.bench import CpuContention

    def cpu_ticks(pid):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    spin = "import time\nt = time.time() + {}\nwhile time.time() < t: pass"
    child = subprocess.Popen([sys.executable, "-c", spin.format(3.0)])
    try:
        time.sleep(0.5)  # the child is up and spinning
        before, t0 = cpu_ticks(child.pid), time.monotonic()
        with CpuContention() as busy:
            time.sleep(1.0)
        child_cores = (cpu_ticks(child.pid) - before) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - t0)
    finally:
        child.kill()
        child.wait()
    with CpuContention() as mine:
        exec(spin.format(1.0))
    assert child_cores > 0.2, child_cores  # the child did spin
    # Everything else on the machine only adds; clock ticks are 10 ms, so allow 0.1 core of slack.
    assert busy.other_cores > child_cores - 0.1, (busy.other_cores, child_cores)
    assert mine.other_cores < 0.4, mine.other_cores
    assert busy.steal_cores >= 0 and mine.steal_cores >= 0


def test_ignore_eos_generates_exactly_max_new_tokens(llm):
    prompt = llm.render_chat([{"role": "user", "content": "Reply with just the word yes."}])
    assert llm.generate(prompt, max_new_tokens=40).finish_reason == "stop"
    c = llm.generate(prompt, max_new_tokens=40, ignore_eos=True)
    assert len(c.token_ids) == 40 and c.finish_reason == "length"
    assert len(c.stats.decode_step_s) == 39


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_device_without_a_gpu_is_a_clean_error():
    for args in (("bench", "--device", "cuda", "--dtype", "bfloat16"), ("generate", "hi", "--device", "cuda")):
        r = run(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "device='cuda' needs a CUDA GPU" in r.stderr
    r = run("profile", "--device", "cuda")
    assert r.returncode == 2 and "profile times the CPU engine" in r.stderr, r.stderr


@pytest.mark.skipif(not (torch.cuda.is_available() and pyruntime._ext.C.with_cuda),
                    reason="needs a CUDA GPU and a CUDA build of pyruntime")
def test_bench_on_cuda_reports_the_gpu(tmp_path):
    out = tmp_path / "bench.json"
    r = run("bench", "--device", "cuda", "--dtype", "bfloat16", "--prompt-tokens", "16", "--new-tokens", "8",
            "--reps", "1", "--json", str(out))
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert report["device"] == "cuda" and report["gpu"] == torch.cuda.get_device_name()
    assert report["read_bandwidth_gbps"] > 100  # a GPU's copy bandwidth, not the host's
    assert 0 < report["mbu"] < 2 and "(cuda)" in r.stdout


def test_bad_model_is_a_clean_error():
    r = run("generate", "hi", "--model", "/nonexistent/model")
    assert r.returncode == 2
    assert "error" in r.stderr and "Traceback" not in r.stderr


def test_profile_writes_a_trace(tmp_path):
    trace = tmp_path / "trace.json"
    r = run("profile", "--dtype", "int8", "--prompt-tokens", "8", "--new-tokens", "3", "--trace", str(trace))
    assert r.returncode == 0, r.stderr
    assert "gate_up_silu" in r.stdout and "decode step" in r.stdout and "other processes" in r.stdout
    shares = [float(line.split()[-1].rstrip("%")) for line in r.stdout.splitlines()
              if line.split() and line.split()[0] in ("qkv_proj", "attention", "gate_up_silu", "down_proj", "lm_head")]
    assert len(shares) == 5 and 50 < sum(shares) <= 100.5
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e["name"] for e in events}
    assert {"prefill", "decode 1", "decode 3", "layer 0", "layer 29", "attention", "lm_head"} <= names
    assert all(e["ph"] == "X" and e["dur"] >= 0 for e in events)
