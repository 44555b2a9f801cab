"""Plain torch references of the ops, computed in float32: the tests' oracle."""

import torch


def rms_norm(x, weight, eps=1e-6):
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()


def cos_sin_cache(max_pos, rot_dim, base=10000.0):
    inv_freq = 1.0 / (base ** (torch.arange(0, rot_dim, 2, dtype=torch.float64) / rot_dim))
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float64), inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).float()


def rotary(x, positions, cache, is_neox=True):
    """x [T, H, D]; rotates the first rot_dim features of every head."""
    rot_dim = cache.shape[1]
    half = rot_dim // 2
    cos = cache[positions, :half].unsqueeze(1)
    sin = cache[positions, half:].unsqueeze(1)
    xf = x.float().clone()
    rot = xf[..., :rot_dim]
    if is_neox:
        x1, x2 = rot[..., :half], rot[..., half:]
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    else:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        out = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)
    xf[..., :rot_dim] = out
    return xf


def silu_and_mul(x):
    xf = x.float()
    i = xf.shape[-1] // 2
    return torch.nn.functional.silu(xf[..., :i]) * xf[..., i:]


def gated_mlp(x, gate_up, down):
    h = x.float() @ gate_up.float().T
    return silu_and_mul(h) @ down.float().T


def decode_attention(q, k_cache, v_cache, seq_lens, scale=None):
    """q [B, Hq, D], caches [B, Hkv, S, D]: softmax over each sequence's first seq_len keys."""
    b, hq, d = q.shape
    hkv = k_cache.shape[1]
    scale = d**-0.5 if scale is None else scale
    out = torch.empty(b, hq, d)
    for i in range(b):
        n = int(seq_lens[i])
        k = k_cache[i, :, :n].float().repeat_interleave(hq // hkv, dim=0)
        v = v_cache[i, :, :n].float().repeat_interleave(hq // hkv, dim=0)
        s = torch.einsum("hd,hsd->hs", q[i].float(), k) * scale
        out[i] = torch.einsum("hs,hsd->hd", s.softmax(-1), v)
    return out


def causal_attention(q, k, v, start_pos=0, scale=None):
    """q [T, Hq, D] at positions start_pos..; k, v [Hkv, start_pos+T, D]."""
    t, hq, d = q.shape
    hkv, n, _ = k.shape
    scale = d**-0.5 if scale is None else scale
    kf = k.float().repeat_interleave(hq // hkv, dim=0)
    vf = v.float().repeat_interleave(hq // hkv, dim=0)
    s = torch.einsum("thd,hsd->hts", q.float(), kf) * scale
    allowed = torch.arange(n)[None, :] <= (start_pos + torch.arange(t))[:, None]
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hts,hsd->thd", s.softmax(-1), vf)
