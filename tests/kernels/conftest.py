"""The kernel tests' instruction-set levels: `level` runs a test's kernels at each level this
CPU can execute (a level it cannot is skipped with the features it lacks named, never run)."""

import pytest

import pyruntime
from pyruntime._ext import C

LEVELS = C.cpu_isa_levels()


@pytest.fixture(params=LEVELS)
def level(request):
    """Runs the test's kernels at one level, then restores the level that was active."""
    missing = C.cpu_isa_missing_features(request.param)
    if missing:
        pytest.skip(f"this CPU cannot run the {request.param} kernels: it lacks {missing}")
    before = C.cpu_isa()
    pyruntime.set_cpu_isa(request.param)
    yield request.param
    pyruntime.set_cpu_isa(before)
