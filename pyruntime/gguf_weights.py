"""Weights straight from a GGUF file, memory-mapped (the gguf package's reader): each matrix kept
in its file type (a C.WeightMatrix over the file's own bytes: GGUF's block formats, float32,
bfloat16), or dequantized to float when the precision asks for float weights. Tensor names come
from the gguf package's own table (gguf.get_tensor_name_map), not from a list written here."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pyruntime._ext import C
from pyruntime.config import ModelConfig
from pyruntime.errors import ModelLoadError
from pyruntime.formats import F16_BLOCK, GGUF_BLOCK_FORMATS
from pyruntime.weights import ModelWeights, hf_layer


def _reverse_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undoes llama.cpp's interleaving of q/k rows back to Hugging Face's rotate-half order. Rows
    move whole, so it holds for quantized rows (their bytes) as for float ones."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _from_numpy(a: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # the file's map is read-only; the engines never write weights
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def open_gguf(path: Path):
    """The gguf package's reader over `path` (memory-mapped), each tensor's record checked
    first, so that a bad one is named: an unknown type id, rows not a whole number of blocks,
    data past the end of the file (a truncated file). ModelLoadError for those and for a file
    the reader cannot parse. The last few readers are kept (by the file's identity, size and
    time): parsing the metadata of a large vocabulary takes seconds, and loading a file reads it
    twice (pyruntime.convert, then the weights)."""
    try:
        st = Path(path).resolve().stat()
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read the GGUF file ({e})") from None
    return _open_gguf(Path(path).resolve(), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _open_gguf(path: Path, *identity):
    import gguf
    from gguf.constants import GGML_QUANT_SIZES

    class Reader(gguf.GGUFReader):
        def _build_tensors(self, start_offs, fields):
            size = self.data.shape[0]
            for field in fields:
                _, name_data, _, dims, raw_type, offset = field.parts
                name = bytes(name_data).decode("utf-8", "replace")
                try:
                    qt = gguf.GGMLQuantizationType(int(raw_type[0]))
                except ValueError:
                    raise ModelLoadError(f"{path}: tensor {name!r} has unknown type id {int(raw_type[0])}") from None
                block, type_size = GGML_QUANT_SIZES[qt]
                if len(dims) == 0 or int(dims[0]) % block:
                    raise ModelLoadError(f"{path}: tensor {name!r} ({qt.name}) has rows of {int(dims[0]) if len(dims) else 0} "
                                         f"values, not a whole number of its blocks of {block}")
                end = start_offs + int(offset[0]) + int(np.prod(dims.astype(np.uint64))) * type_size // block
                if end > size:
                    raise ModelLoadError(f"{path}: tensor {name!r} ends {end - size} bytes past the end of the file "
                                         "(truncated?)")
            super()._build_tensors(start_offs, fields)

    try:
        return Reader(str(path))
    except ModelLoadError:
        raise
    except Exception as e:  # a damaged file surfaces as any of numpy's, struct's or gguf's errors
        raise ModelLoadError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None


class GGUFSource:
    """Tensors of one GGUF file by Hugging Face name, memory-mapped."""

    def __init__(self, path: Path):
        import gguf

        self.path = path
        self.reader = open_gguf(path)
        try:
            arch = self.reader.fields["general.architecture"].contents()
        except Exception as e:  # missing or damaged
            raise ModelLoadError(f"{path}: GGUF metadata general.architecture cannot be read ({e})") from None
        archs = {name: a for a, name in gguf.MODEL_ARCH_NAMES.items()}
        self.arch = arch
        if arch not in archs:
            raise ModelLoadError(f"{path}: GGUF architecture {arch!r} is unknown to the gguf package")
        blocks = self.reader.fields.get(f"{arch}.block_count")
        n_blocks = int(blocks.contents()) if blocks is not None else 0
        self.names = gguf.get_tensor_name_map(archs[arch], n_blocks)
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.used: set[str] = set()  # the tensors read so far
        self.qtypes = gguf.GGMLQuantizationType

    def gguf_name(self, hf_name: str) -> str | None:
        return self.names.get_name(hf_name, try_suffixes=(".weight", ".bias"))

    def __contains__(self, hf_name: str) -> bool:
        return self.gguf_name(hf_name) in self.tensors

    def _tensor(self, hf_name: str, shape: tuple[int, ...]):
        name = self.gguf_name(hf_name)
        t = self.tensors.get(name) if name else None
        if t is None:
            raise ModelLoadError(f"{self.path}: tensor {name or hf_name!r} is missing")
        got = tuple(int(x) for x in reversed(t.shape))
        if got != tuple(shape):
            raise ModelLoadError(f"{self.path}: tensor {t.name!r} has shape {got}, expected {tuple(shape)}")
        self.used.add(t.name)
        return t

    def vector(self, hf_name: str, size: int) -> torch.Tensor:
        return self.floats(hf_name, (size,))

    def floats(self, hf_name: str, shape, permute_heads: int = 0) -> torch.Tensor:
        """The tensor as float32 (dequantized by the gguf package where it is quantized)."""
        from gguf.quants import dequantize

        t = self._tensor(hf_name, shape)
        try:
            w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        except (NotImplementedError, ValueError, KeyError) as e:
            raise ModelLoadError(f"{self.path}: tensor {t.name!r} of type {t.tensor_type!r} cannot be read ({e})") from None
        if permute_heads:
            w = _reverse_permute(w, permute_heads)
        return _from_numpy(np.ascontiguousarray(w))

    def matrix(self, hf_name: str, shape, permute_heads: int = 0):
        """The matrix in its file type: a C.WeightMatrix over the mapped bytes (block formats,
        F32, BF16, F16 with rows of a multiple of 32 values; q and k rows reordered into a copy),
        or float32 for the other types (F16 rows of other lengths)."""
        t = self._tensor(hf_name, shape)
        qt = self.qtypes(t.tensor_type)
        name = qt.name.lower()
        if name in GGUF_BLOCK_FORMATS:
            data = t.data
            if data.ndim != 2 or data.shape[0] != shape[0]:
                raise ModelLoadError(f"{self.path}: tensor {t.name!r} ({qt.name}) has {data.shape} bytes for shape {tuple(shape)}")
            if permute_heads:
                data = np.ascontiguousarray(_reverse_permute(data, permute_heads))
            try:
                return C.WeightMatrix(getattr(C.WeightFormat, name), _from_numpy(data))
            except ValueError as e:
                raise ModelLoadError(f"{self.path}: tensor {t.name!r}: {e}") from None
        f16 = qt == self.qtypes.F16 and shape[1] % F16_BLOCK == 0
        if qt in (self.qtypes.F32, self.qtypes.BF16) or f16:
            # The reader gives F32 and F16 as their values, BF16 as its bytes ([rows, 2 * cols] uint8).
            data = t.data.reshape(shape[0], -1)
            if permute_heads:
                data = np.ascontiguousarray(_reverse_permute(data, permute_heads))
            data = _from_numpy(data)
            data = data.view(torch.bfloat16) if qt == self.qtypes.BF16 else data
            if tuple(data.shape) != tuple(shape):
                raise ModelLoadError(f"{self.path}: tensor {t.name!r} ({qt.name}) holds {t.data.shape} for shape {tuple(shape)}")
            if f16:  # the engines take F16 rows as bytes, in blocks of 32 values
                return C.WeightMatrix(C.WeightFormat.f16, data.view(torch.uint8))
            fmt = C.WeightFormat.bfloat16 if qt == self.qtypes.BF16 else C.WeightFormat.float32
            return C.WeightMatrix(fmt, data)
        return self.floats(hf_name, shape, permute_heads)


def load_gguf_weights(path: Path, cfg: ModelConfig, load: torch.dtype | None, progress: bool = True) -> ModelWeights:
    """load None: every matrix in its file type (GGUFSource.matrix); a dtype: every matrix
    dequantized to float32, then converted to it. Norms and biases float32 (Gemma's norms hold
    1 + w already: llama.cpp's converter adds the 1). q and k rows are put back in Hugging
    Face's order where llama.cpp's converter interleaved them (files of the `llama` architecture,
    whatever the config says: Mistral's files are `llama` too)."""
    src = GGUFSource(path)
    H, V = cfg.hidden_size, cfg.vocab_size
    permuted = src.arch == "llama"  # llama.cpp's converter interleaves q/k rows of this architecture only

    def mat(name, shape, heads=0):
        heads = heads if permuted else 0
        if load is None:
            return src.matrix(name, shape, heads)
        return src.floats(name, shape, heads).to(load)

    def rows(m, r0, r1):
        """Rows [r0, r1) of a matrix as it was loaded (a view)."""
        if isinstance(m, C.WeightMatrix):
            return C.WeightMatrix(m.format, m.data[r0:r1])
        return m[r0:r1]

    embed = mat("model.embed_tokens.weight", (V, H))
    layers = [hf_layer(cfg, i, matrix=mat, norm=src.vector, bias=src.vector, rows=rows)
              for i in tqdm(range(cfg.num_layers), desc=f"mapping {path.name}", unit="layer", disable=not progress,
                            leave=False)]
    final_norm = src.vector("model.norm.weight", H)
    lm_head = mat("lm_head.weight", (V, H)) if "lm_head.weight" in src else embed
    # RoPE factors went into the config (pyruntime.convert); anything else unread is a part of the
    # model this runtime would silently leave out.
    unread = sorted(set(src.tensors) - src.used - {"rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"})
    if unread:
        raise ModelLoadError(f"{path}: tensors {unread[:4]}{' ...' if len(unread) > 4 else ''} are not part of a "
                             f"{cfg.architecture} as pyruntime runs it")
    return ModelWeights(embed=embed, layers=layers, final_norm=final_norm, lm_head=lm_head)
