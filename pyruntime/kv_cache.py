"""The KV cache: contiguous, preallocated for max_seq_len, one row per sequence."""

from __future__ import annotations

import torch


class KVCache:
    """k and v [num_layers, batch, Hkv, max_seq_len, D]. Layer l of row b is the contiguous
    block k[l, b] [Hkv, max_seq_len, D] the attention kernels read. The CPU engine fills k[l, b, h]
    in its own order when max_seq_len is a multiple of 16 (tiles of 16 keys, features in rows:
    csrc/cpu/attention_internal.h), so a cache it wrote is read by the engine, not by ops."""

    def __init__(self, num_layers: int, batch: int, num_kv_heads: int, max_seq_len: int, head_dim: int,
                 dtype: torch.dtype, device: str = "cpu"):
        shape = (num_layers, batch, num_kv_heads, max_seq_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.batch = batch
        self.max_seq_len = max_seq_len

    @staticmethod
    def bytes_for(num_layers, batch, num_kv_heads, max_seq_len, head_dim, dtype) -> int:
        """2 (k and v) x layers x batch x Hkv x max_seq_len x D x bytes per element."""
        return 2 * num_layers * batch * num_kv_heads * max_seq_len * head_dim * torch.finfo(dtype).bits // 8

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()
