"""Loads the compiled extension, with a clear message when it was not built."""

try:
    from pyruntime import _C  # noqa: F401  (registers torch.ops.pyruntime)
except ImportError as e:  # pragma: no cover - only without a build
    raise ImportError(
        "pyruntime's compiled extension (pyruntime._C) is not built or failed to load: "
        f"{e}. Build it with: pip install --no-build-isolation -e ."
    ) from e

C = _C
