"""One build, every CPU: the kernels of each instruction-set level against the plain-torch
references (a level this CPU cannot run is skipped with the features it lacks named, never
executed), the run-time choice against /proc/cpuinfo, and the compiled code itself checked for
instructions outside their level."""

import collections
import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pyruntime
from pyruntime import ops
from pyruntime._ext import C
from tests.kernels import reference as ref
from tests.tolerances import assert_close

LEVELS = C.cpu_isa_levels()


def _cpuinfo_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    pytest.skip("/proc/cpuinfo has no flags line")


DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_kernels(level, dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 769, generator=g).to(dtype)
    w = torch.randn(769, generator=g).to(dtype)
    assert C.cpu_isa() == level
    assert_close(ops.rms_norm(x, w, 1e-6), ref.rms_norm(x, w, 1e-6).to(dtype))
    xs = torch.randn(5, 2 * 83, generator=g).to(dtype)
    assert_close(ops.silu_and_mul(xs), ref.silu_and_mul(xs).to(dtype))
    q = torch.randn(6, 4, 64, generator=g).to(dtype)
    k = torch.randn(6, 2, 64, generator=g).to(dtype)
    pos = torch.tensor([0, 3, 17, 5, 99, 1])
    cache = ref.cos_sin_cache(128, 64)
    want_q, want_k = ref.rotary(q, pos, cache), ref.rotary(k, pos, cache)
    ops.rotary_embedding(pos, q, k, cache, True)
    assert_close(q, want_q.to(dtype))
    assert_close(k, want_k.to(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", [1, 3, 16])
def test_products(level, dtype, tokens):
    g = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, 200, generator=g).to(dtype)
    w = (torch.randn(83, 200, generator=g) / 14).to(dtype)
    assert_close(ops.linear(x, w), (x.float() @ w.float().T).to(dtype), scale=2)
    gate_up = (torch.randn(2 * 96, 200, generator=g) / 14).to(dtype)
    down = (torch.randn(200, 96, generator=g) / 10).to(dtype)
    assert_close(ops.gated_mlp(x, gate_up, down), ref.gated_mlp(x, gate_up, down).to(dtype), scale=2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 80, 128])
def test_attention(level, dtype, head_dim):
    g = torch.Generator().manual_seed(head_dim)
    b, hq, hkv, s_max = 2, 8, 2, 300
    q = torch.randn(b, hq, head_dim, generator=g).to(dtype)
    k = torch.randn(b, hkv, s_max, head_dim, generator=g).to(dtype)
    v = torch.randn(b, hkv, s_max, head_dim, generator=g).to(dtype)
    lens = torch.tensor([1, 257], dtype=torch.int32)
    assert_close(ops.gqa_decode_attention(q, k, v, lens), ref.decode_attention(q, k, v, lens).to(dtype))
    t, start = 37, 20
    qp = torch.randn(t, hq, head_dim, generator=g).to(dtype)
    got = ops.prefill_attention(qp, k[0], v[0], start)
    want = ref.causal_attention(qp, k[0, :, : start + t], v[0, :, : start + t], start)
    assert_close(got, want.to(dtype))


@functools.cache
def _other_level_run(other: str, dtype: str, ids: tuple):
    """The bundled model's logits and greedy tokens for ids at level `other` (computed once per
    level and dtype: the scalar level's run is the slow one)."""
    before = C.cpu_isa()
    pyruntime.set_cpu_isa(other)
    try:
        llm = pyruntime.LLM("smollm2-135m-instruct", dtype=dtype, max_seq_len=256, progress=False)
        return llm.logits(list(ids)), llm.generate(list(ids), max_new_tokens=8).token_ids
    finally:
        pyruntime.set_cpu_isa(before)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_engine_greedy_matches_best_level(level, dtype, request):
    """The whole engine at this level gives the logits of another level (the scalar one, or the
    best one for scalar itself; the runtime tests check the best level against transformers),
    and the same greedy tokens."""
    llm = pyruntime.LLM("smollm2-135m-instruct", dtype=dtype, max_seq_len=256, progress=False)
    assert llm.engine.isa == level
    ids = llm.tokenizer.encode("The capital of France is")
    got = llm.logits(ids)
    tokens = llm.generate(ids, max_new_tokens=8).token_ids
    want, want_tokens = _other_level_run(C.best_cpu_isa() if level == "scalar" else "scalar", dtype, tuple(ids))
    tol = {"float32": 1e-3, "bfloat16": 5e-2, "int8": 2e-2}[dtype]
    torch.testing.assert_close(got, want, atol=tol * want.abs().max().item(), rtol=0)
    assert tokens == want_tokens


def test_machine_probes(level):
    """The read-bandwidth and FMA probes the benchmarks divide by, at every level: finite and
    positive, and bounded by what any machine of today could do (a memory read slower than 0.1
    GB/s or faster than 10 TB/s is a broken probe)."""
    bw = C.measure_read_bandwidth_gbps(1 << 24)
    assert 0.1 < bw < 10_000
    fma = C.measure_fma_gflops()
    assert 0.1 < fma < 100_000


def test_detection_matches_proc_cpuinfo():
    flags = _cpuinfo_flags()
    f = pyruntime.cpu_features()
    for ours, linux in [("avx2", "avx2"), ("fma", "fma"), ("f16c", "f16c"), ("avx512f", "avx512f"),
                        ("avx512bw", "avx512bw"), ("avx512vl", "avx512vl"), ("avx512dq", "avx512dq"),
                        ("avx512_bf16", "avx512_bf16"), ("avx512_vnni", "avx512_vnni"),
                        ("amx_tile", "amx_tile"), ("amx_bf16", "amx_bf16")]:
        assert f["features"][ours] == (linux in flags), ours
    # The best level is the highest whose features /proc/cpuinfo lists.
    needs = {"scalar": set(), "avx2": {"avx2", "fma", "f16c"}}
    needs["avx512"] = needs["avx2"] | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
    needs["avx512bf16"] = needs["avx512"] | {"avx512_bf16"}
    runnable = [lv for lv in LEVELS if needs[lv] <= flags]
    assert f["best_isa"] == runnable[-1]
    for lv in LEVELS:
        missing = set(filter(None, f["levels"][lv].split(", ")))
        assert missing == needs[lv] - flags, lv
    assert f["isa"] == C.cpu_isa()
    if not f["features"]["avx512_vnni"]:
        assert not f["paths"]["int8_vnni"]
    # One row after another by default on AMD's CPUs before Zen 5 (their vendor id, cpu family
    # below 26), four side by side elsewhere.
    info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
                if ":" in line)
    info = {k.strip(): v.strip() for k, v in info.items()}
    if "vendor_id" in info and "cpu family" in info and "PYRUNTIME_Q8_DECODE_ROWS" not in os.environ:
        amd_before_zen5 = info["vendor_id"] == "AuthenticAMD" and int(info["cpu family"]) < 26
        assert f["q8_decode_rows"] == (1 if amd_before_zen5 else 4)


def test_a_level_the_cpu_lacks_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown CPU instruction-set level 'avx9'"):
        pyruntime.set_cpu_isa("avx9")
    with pytest.raises(TypeError, match="name must be a str"):
        pyruntime.set_cpu_isa(2)
    lacking = [lv for lv in LEVELS if C.cpu_isa_missing_features(lv)]
    for lv in lacking:
        with pytest.raises(ValueError, match=f"cannot run the {lv} kernels .*lacks"):
            pyruntime.set_cpu_isa(lv)


@pytest.mark.parametrize("value,message", [
    ("avx9", "unknown CPU instruction-set level 'avx9'"),
    ("scalar", None),
])
def test_environment_variable_picks_the_level(value, message):
    code = ("import torch, pyruntime; from pyruntime import ops; "
            "x = torch.ones(2, 64); ops.rms_norm(x, torch.ones(64)); print(pyruntime.cpu_features()['isa'])")
    env = dict(os.environ, PYRUNTIME_CPU_ISA=value)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    if message is None:
        assert r.returncode == 0, r.stderr
        assert r.stdout.split()[-1] == value
    else:
        assert r.returncode != 0 and message in r.stderr and "PYRUNTIME_CPU_ISA" in r.stderr


# Registers of each instruction family, and the mnemonics that name one outright.
_ZMM = re.compile(r"%zmm|%k[0-7]\b")
_YMM = re.compile(r"%ymm")
_AMX = re.compile(r"%tmm|\b(ldtilecfg|sttilecfg|tileloadd|tileloaddt1|tilestored|tilezero|tilerelease|tdpbf16ps)\b")
_VNNI = re.compile(r"^vpdp(bu|ws)sds?\b")
_BF16 = re.compile(r"^(vcvtneps2bf16|vcvtne2ps2bf16|vdpbf16ps)\b")
_LEVEL = re.compile(r"pyruntime::cpu::(scalar|avx2|avx512bf16|avx512)::")


def _disallowed(function: str, mnemonic: str, operands: str) -> str | None:
    """What in one instruction the function's level may not hold, or None."""
    m = _LEVEL.search(function)
    level = m.group(1) if m else None  # None: baseline code (bindings, dispatch, libraries)
    text = f"{mnemonic} {operands}"
    guarded = level in ("avx512", "avx512bf16")  # run-time checked paths live there
    if _AMX.search(text):
        return None if guarded and "::amx::" in function else "AMX"
    if _VNNI.search(mnemonic):
        return None if guarded and "::vnni::" in function else "AVX512-VNNI"
    if _BF16.search(mnemonic):
        return None if level == "avx512bf16" or (guarded and "::amx::" in function) else "AVX512-BF16"
    if _ZMM.search(operands):
        return None if guarded else "AVX-512"
    if _YMM.search(operands):
        return None if level in ("avx2", "avx512", "avx512bf16") else "AVX"
    return None


def test_no_instruction_outside_its_level():
    """Every function of the extension uses only its level's instructions: a shared inline
    function or template compiled for AVX-512 and picked by the linker for every caller would
    crash an AVX2-only CPU."""
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) is not installed")
    out = subprocess.run([objdump, "-d", "-C", "--no-show-raw-insn", C.__file__], capture_output=True,
                         text=True, check=True).stdout
    function, bad, vector_functions = None, collections.Counter(), collections.Counter()
    for line in out.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if m:
            function = m.group(1)
            continue
        if function is None or "\t" not in line:
            continue
        insn = line.split("\t", 1)[1].split("<", 1)[0].split("#", 1)[0].strip()
        mnemonic, _, operands = insn.partition(" ")
        if _ZMM.search(operands) or _YMM.search(operands):
            lv = _LEVEL.search(function)
            vector_functions[lv.group(1) if lv else None] += 1
        why = _disallowed(function, mnemonic, operands)
        if why:
            bad[(why, function[:160])] += 1
    assert not bad, "\n".join(f"{why}: {fn} ({n} instructions)" for (why, fn), n in bad.most_common(20))
    # The disassembly was read: each vector level's kernels do use their registers.
    for lv in ("avx2", "avx512", "avx512bf16"):
        assert vector_functions[lv] > 100, (lv, vector_functions)
