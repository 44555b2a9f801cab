"""Which CPU kernels run: the instruction-set level chosen at run time from cpuid, and what
this CPU has. One build holds every level (scalar, avx2, avx512, avx512bf16); the best one
this CPU runs is taken unless PYRUNTIME_CPU_ISA (before the first kernel call) or
set_cpu_isa() names another."""

from __future__ import annotations

from pyruntime._ext import C


def cpu_features() -> dict:
    """What was detected and what was chosen:

    isa: the level the kernels run at now; best_isa: the highest this CPU runs;
    levels: every level compiled in -> the features it needs that this CPU lacks ("" when it
    runs here); features: the cpuid flags that matter (True/False); paths: the special product
    paths the active level takes (int8 weights on AVX512-VNNI, bf16 prefill on AMX tiles, and
    integer_gemm: the activation bits of the block formats' prompts on the integer GEMM, [8] on
    AVX2, [8, 16] on AVX512-VNNI without AMX, [] elsewhere);
    q8_decode_rows: how many weight rows a one-token integer decode product reads at once (1:
    one after another, the default on AMD CPUs before Zen 5; 4: side by side, the 32-value formats a row per
    vector lane; PYRUNTIME_Q8_DECODE_ROWS sets it).
    """
    flags = C.cpu_features()
    paths = {"int8_vnni": flags.pop("int8_vnni_path"), "bf16_amx": flags.pop("bf16_amx_path"),
             "integer_gemm": [8] * C.int8_prompt_products() + [16] * C.int16_prompt_products()}
    levels = {name: C.cpu_isa_missing_features(name) for name in C.cpu_isa_levels()}
    return {"isa": C.cpu_isa(), "best_isa": C.best_cpu_isa(), "levels": levels, "features": flags, "paths": paths,
            "q8_decode_rows": C.q8_decode_rows()}


def set_cpu_isa(name: str) -> None:
    """Runs every later kernel call, and every engine built later, at level `name` (one of
    cpu_features()["levels"]). ValueError when the name is unknown or this CPU lacks a
    feature the level needs (the message names them)."""
    if not isinstance(name, str):
        raise TypeError(f"set_cpu_isa: name must be a str, got {type(name).__name__}")
    C.set_cpu_isa(name)


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (platform.machine() where it is absent)."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def describe() -> str:
    """One line for reports: the active level, the best one, and the special paths taken."""
    f = cpu_features()
    paths = [p for p, on in f["paths"].items() if on]
    return (f"kernels {f['isa']} (best here {f['best_isa']}; paths: {', '.join(paths) or 'none'}; "
            f"decode rows at once: {f['q8_decode_rows']})")
