"""The KV cache: preallocated, one row per sequence, each layer keeping its own number of
positions per sequence (the engine's layer_slots)."""

from __future__ import annotations

import torch


class KVCache:
    """k and v: flat tensors holding, one layer after another, each layer's [batch, Hkv, S_l, D]
    (S_l = slots[l]: max_seq_len, or on a sliding-window layer of the CPU engine a ring of fewer
    positions, position p in slot p % S_l). layer(l) gives layer l's two as views. Layer l of row
    b is the contiguous block [Hkv, S_l, D] the attention kernels read. The CPU engine fills K in
    its own order when max_seq_len is a multiple of 16 (tiles of 16 keys, features in rows:
    csrc/cpu/attention_internal.h), so a cache it wrote is read by the engine, not by ops."""

    def __init__(self, slots: list[int], batch: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: str = "cpu"):
        self.slots = list(slots)
        self.batch = batch
        self.shapes = [(batch, num_kv_heads, s, head_dim) for s in self.slots]
        self._begins = [batch * num_kv_heads * head_dim * sum(self.slots[:l]) for l in range(len(self.slots))]
        size = batch * num_kv_heads * head_dim * sum(self.slots)
        self.k = torch.zeros(size, dtype=dtype, device=device)
        self.v = torch.zeros(size, dtype=dtype, device=device)

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer`'s K and V as views [batch, Hkv, S_l, D] of the cache."""
        shape, begin = self.shapes[layer], self._begins[layer]
        n = shape[0] * shape[1] * shape[2] * shape[3]
        return self.k[begin : begin + n].view(shape), self.v[begin : begin + n].view(shape)

    @staticmethod
    def bytes_for(slots: list[int], batch: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        """2 (k and v) x batch x Hkv x D x (the layers' slots) x bytes per element."""
        return 2 * batch * num_kv_heads * head_dim * sum(slots) * torch.finfo(dtype).bits // 8

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()
