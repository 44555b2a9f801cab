"""CUDA decode attention: kernel time of ops.gqa_decode_attention against
torch.nn.functional.scaled_dot_product_attention (enable_gqa; cuDNN's flash kernel for 16-bit
types) on the same inputs, B=1:

    python benchmarks/bench_cuda_attention.py [--dtypes bfloat16,float16,float32] [--lens 1024,4096]

Times are GPU kernel time per call from the torch profiler (CUPTI), summed over every kernel the
call launches (the op's seq_len check included, copies excluded), so that the Python call and
the launch gaps do not count; each call reads its own copy of the cache, rotated through more
than 200 MB, so that it comes from HBM and not from L2. "of copy" is the KV bytes read over the
kernel time, as a fraction of a 1 GB device copy's rate (read + write) measured in the same run.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from pyruntime import ops

SHAPES = {"llama3-8b": (32, 8, 128), "smollm2-135m": (9, 3, 64)}  # Hq, Hkv, D


def copy_bandwidth():
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").fill_(1)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        dst.copy_(src)
    end.record()
    end.synchronize()
    return 2 * src.numel() * 10 / (start.elapsed_time(end) / 1e3)


def kernel_us(calls):
    """Mean GPU kernel time of one call (every kernel it launches, copies excluded)."""
    for call in calls[:3]:
        call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for call in calls:
            call()
        torch.cuda.synchronize()
    total = sum(e.self_device_time_total for e in prof.key_averages()
                if "Memcpy" not in e.key and "Memset" not in e.key)
    return total / len(calls)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtypes", default="bfloat16,float16,float32")
    ap.add_argument("--lens", default="1024,4096,8192,32768")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    bw = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; device copy {bw / 1e9:.0f} GB/s")
    print(f"{'dtype':9s} {'shape':13s} {'S':>6s} {'ours us':>8s} {'of copy':>8s} {'sdpa us':>8s} {'speed-up':>8s}")
    g = torch.Generator(device="cuda").manual_seed(0)
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        for shape, (hq, hkv, d) in SHAPES.items():
            for s in (int(x) for x in args.lens.split(",")):
                kv_bytes = 2 * hkv * s * d * dtype.itemsize
                n = max(1, min(32, (200 << 20) // kv_bytes))
                qs = [torch.randn(1, hq, d, device="cuda", generator=g).to(dtype) for _ in range(n)]
                ks = [torch.randn(1, hkv, s, d, device="cuda", generator=g).to(dtype) for _ in range(n)]
                vs = [torch.randn(1, hkv, s, d, device="cuda", generator=g).to(dtype) for _ in range(n)]
                lens = torch.tensor([s], dtype=torch.int32, device="cuda")
                reps = max(1, 20 // n)
                ours = kernel_us([lambda i=i: ops.gqa_decode_attention(qs[i], ks[i], vs[i], lens) for i in range(n)] * reps)
                sdpa = kernel_us([lambda i=i: F.scaled_dot_product_attention(qs[i].unsqueeze(2), ks[i], vs[i],
                                                                             enable_gqa=True) for i in range(n)] * reps)
                print(f"{name:9s} {shape:13s} {s:6d} {ours:8.1f} {kv_bytes / (ours * 1e-6) / bw:8.0%} "
                      f"{sdpa:8.1f} {sdpa / ours:7.2f}x", flush=True)
                del qs, ks, vs


if __name__ == "__main__":
    main()
