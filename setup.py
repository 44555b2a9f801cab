"""Builds pyruntime._C from csrc/sources.txt (the list CMakeLists.txt reads too).

Environment switches:
  PYRUNTIME_ISA       native (default: what this CPU has), avx512bf16, avx512, avx2 or scalar
  PYRUNTIME_CUDA      auto (default: when torch has CUDA), 0 or 1
  PYRUNTIME_SANITIZE  1 builds with AddressSanitizer and UndefinedBehaviorSanitizer
  PYRUNTIME_DEBUG     1 builds with -O0 -g
Build without isolation (it would download another torch):
  pip install --no-build-isolation -e .
"""

import os
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent.resolve()
CSRC = ROOT / "csrc"

AVX512 = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"]
ISA_FLAGS = {
    "avx512bf16": AVX512 + ["-mavx512bf16"],
    "avx512": AVX512,
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "scalar": [],
}


def read_sources():
    lines = (CSRC / "sources.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def host_isa():
    try:
        flags = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
                break
    except OSError:
        return "scalar"
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "avx512bf16" if "avx512_bf16" in flags else "avx512"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    return "scalar"


def chosen_isa():
    isa = os.environ.get("PYRUNTIME_ISA", "native")
    if isa == "native":
        isa = host_isa()
    if isa not in ISA_FLAGS:
        raise SystemExit(f"PYRUNTIME_ISA={isa!r}: expected native, {', '.join(ISA_FLAGS)}")
    return isa


def extension():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    want_cuda = os.environ.get("PYRUNTIME_CUDA", "auto")
    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    if want_cuda == "1" and not with_cuda:
        raise SystemExit("PYRUNTIME_CUDA=1 but this torch has no CUDA (torch.version.cuda is None)")
    if want_cuda == "0":
        with_cuda = False

    sources = [s for s in read_sources() if with_cuda or not s.endswith(".cu")]
    debug = os.environ.get("PYRUNTIME_DEBUG") == "1"
    sanitize = os.environ.get("PYRUNTIME_SANITIZE") == "1"
    # -O1 under the sanitizers (their usual level): at -O3 the instrumented kernels take minutes
    # each to compile (attention.cpp 6.5 min against 52 s).
    opt = "-O0" if debug else "-O1" if sanitize else "-O3"
    cxx = [opt, "-g" if debug else "-g0", "-fopenmp"]  # the C++ standard: torch's
    cxx += ISA_FLAGS[chosen_isa()]
    ldflags = ["-fopenmp"]
    if sanitize:
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
        cxx += san
        ldflags += san
    kwargs = dict(
        name="pyruntime._C",
        sources=[str(Path("csrc") / s) for s in sources],
        include_dirs=[str(CSRC / "include")],
        extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]} if with_cuda else {"cxx": cxx},
        extra_link_args=ldflags,
        define_macros=[("PYRUNTIME_WITH_CUDA", "1")] if with_cuda else [],
    )
    return (CUDAExtension if with_cuda else CppExtension)(**kwargs)


def main():
    from torch.utils.cpp_extension import BuildExtension

    setup(
        ext_modules=[extension()],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )


if __name__ == "__main__":
    main()
