"""Builds pyruntime._C from csrc/sources.txt (the list CMakeLists.txt reads too).

The CPU kernels are compiled for every instruction-set level (csrc/cpu/kernels_<isa>.cpp) and
chosen at run time, so one build runs on any x86-64 CPU.

Environment switches:
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

def read_sources():
    lines = (CSRC / "sources.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


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
    # -O0 with line tables under the sanitizers: the instrumented kernels of every level take
    # ~6 min to compile at -O1 against ~2 min (their tests then run ~1.5 min longer).
    opt = "-O0" if debug or sanitize else "-O3"
    cxx = [opt, "-g" if debug else "-g1" if sanitize else "-g0", "-fopenmp"]  # the C++ standard: torch's
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
