"""Builds pyruntime._C from csrc/sources.txt (the list CMakeLists.txt reads too).

The CPU kernels (csrc/cpu: every instruction-set level, csrc/cpu/kernels_<isa>.cpp, chosen at
run time, so one build runs on any x86-64 CPU) are built by CMake, as the static library that
the C++ tests and benchmarks link too (in build/; build-asan/ under PYRUNTIME_SANITIZE,
build-debug/ under PYRUNTIME_DEBUG), and linked into the extension: compiled once for both. The
extension compiles the torch bindings (csrc/torch) and, with a CUDA torch, the CUDA kernels.

Environment switches:
  PYRUNTIME_CUDA      auto (default: when torch has CUDA), 0 or 1
  PYRUNTIME_SANITIZE  1 builds with AddressSanitizer and UndefinedBehaviorSanitizer
  PYRUNTIME_DEBUG     1 builds with -O0 -g
Build without isolation (it would download another torch):
  pip install --no-build-isolation -e .
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent.resolve()
CSRC = ROOT / "csrc"

def read_sources():
    lines = (CSRC / "sources.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def cmake_build():
    """(build folder, CMake arguments) of the CPU kernels library for this build's switches.
    scripts/test.sh configures build/ and build-asan/ with the same arguments."""
    if os.environ.get("PYRUNTIME_SANITIZE") == "1":
        return ROOT / "build-asan", ["-DCMAKE_BUILD_TYPE=Debug", "-DCMAKE_CXX_FLAGS_DEBUG=-O0 -g1",
                                     "-DPYRUNTIME_SANITIZE=ON", "-DPYRUNTIME_CUDA=OFF"]
    if os.environ.get("PYRUNTIME_DEBUG") == "1":
        return ROOT / "build-debug", ["-DCMAKE_BUILD_TYPE=Debug", "-DCMAKE_CXX_FLAGS_DEBUG=-O0 -g"]
    return ROOT / "build", ["-DCMAKE_BUILD_TYPE=Release", "-DPYRUNTIME_SANITIZE=OFF"]


def kernels_library() -> Path:
    folder, _ = cmake_build()
    return folder / "libpyruntime_kernels.a"


def build_kernels_library() -> None:
    """Configures and builds the CMake target pyruntime_kernels (incremental: ninja rebuilds
    only what changed)."""
    folder, args = cmake_build()
    # cmake and ninja from PATH, else this environment's (requirements-dev.txt installs both);
    # scripts/test.sh looks in the same order, so one cmake configures each folder.
    env = {**os.environ, "PATH": os.pathsep.join([os.environ.get("PATH", ""), str(Path(sys.executable).parent)])}
    for tool in ("cmake", "ninja"):
        if shutil.which(tool, path=env["PATH"]) is None:
            raise SystemExit(f"building pyruntime needs {tool} (pip install {tool}, or the system package)")
    subprocess.check_call(["cmake", "-S", str(ROOT), "-B", str(folder), "-G", "Ninja", *args],
                          stdout=subprocess.DEVNULL, env=env)
    jobs = os.environ.get("MAX_JOBS")
    subprocess.check_call(["cmake", "--build", str(folder), "--target", "pyruntime_kernels",
                           *(["-j", jobs] if jobs else [])], env=env)


def extension():
    import torch

    if not torch._C._GLIBCXX_USE_CXX11_ABI:  # the kernels library is built with the compiler's default
        raise SystemExit("pyruntime needs a torch built with the C++11 ABI (the pip wheels since torch 2.6)")
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    want_cuda = os.environ.get("PYRUNTIME_CUDA", "auto")
    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    if want_cuda == "1" and not with_cuda:
        raise SystemExit("PYRUNTIME_CUDA=1 but this torch has no CUDA (torch.version.cuda is None)")
    if want_cuda == "0":
        with_cuda = False

    sources = [s for s in read_sources() if s.startswith("torch/") or (with_cuda and s.endswith(".cu"))]
    debug = os.environ.get("PYRUNTIME_DEBUG") == "1"
    sanitize = os.environ.get("PYRUNTIME_SANITIZE") == "1"
    # The bindings as the kernels library (cmake_build): -O0 with line tables under the
    # sanitizers, whose instrumented kernels of every level take minutes longer to compile at -O1.
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
        extra_objects=[str(kernels_library())],
        depends=[str(kernels_library())],  # relinked when the library changes
        define_macros=[("PYRUNTIME_WITH_CUDA", "1")] if with_cuda else [],
    )
    return (CUDAExtension if with_cuda else CppExtension)(**kwargs)


def main():
    from torch.utils.cpp_extension import BuildExtension

    class Build(BuildExtension):
        def build_extensions(self):
            build_kernels_library()
            super().build_extensions()

    setup(
        ext_modules=[extension()],
        cmdclass={"build_ext": Build.with_options(use_ninja=True)},
    )


if __name__ == "__main__":
    main()
