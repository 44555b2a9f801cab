"""Loads the compiled extension, with a clear message when it was not built.

PYRUNTIME_EXTENSION=/path/to/_C.so loads that build instead of the installed one (the
sanitizer run of the tests uses this)."""

import importlib.util
import os
import sys

import torch  # noqa: F401  (loads libtorch, which the extension links against)

_override = os.environ.get("PYRUNTIME_EXTENSION")
try:
    if _override:
        _spec = importlib.util.spec_from_file_location("pyruntime._C", _override)
        if _spec is None or _spec.loader is None:
            raise ImportError(f"PYRUNTIME_EXTENSION={_override} is not a loadable extension module")
        _C = importlib.util.module_from_spec(_spec)
        sys.modules["pyruntime._C"] = _C
        _spec.loader.exec_module(_C)
    else:
        from pyruntime import _C  # noqa: F401  (registers torch.ops.pyruntime)
except ImportError as e:  # pragma: no cover - only without a build
    raise ImportError(
        "pyruntime's compiled extension (pyruntime._C) is not built or failed to load: "
        f"{e}. Build it with: pip install --no-build-isolation -e ."
    ) from e

C = _C
