"""The ops from Python against their torch equivalents, on the same inputs, in one run.

    .venv/bin/python benchmarks/bench_ops.py [--json out.json] [--reps N] [--device cuda]

Prints median latency over repetitions (warm-up excluded; CUDA: timed with events) and the
speed-up over torch, and the achieved bandwidth as a fraction of a large copy's, measured in
the same run;
the headline is gqa_decode_attention against torch.nn.functional.scaled_dot_product_attention
at B=1, Hq=32, Hkv=8, D=128, S=8192.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F

from pyruntime import ops


def median_s(fn, reps, device):
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device, reps):
    """Bytes read per second by a large copy (read + write counted), the bar for the fractions."""
    src = torch.empty(1 << 28 if device == "cuda" else 1 << 26, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    return 2 * src.numel() / median_s(lambda: dst.copy_(src), reps, device)


def cases(dtype, device):
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dtype).to(device)

    for s in (512, 2048, 8192, 32768):
        q, k, v = rnd(1, 32, 128), rnd(1, 8, s, 128), rnd(1, 8, s, 128)
        lens = torch.tensor([s], dtype=torch.int32, device=device)
        yield (f"gqa_decode_attention llama3-8b S={s}", 2 * k.numel() * k.element_size(),
               lambda q=q, k=k, v=v, lens=lens: ops.gqa_decode_attention(q, k, v, lens),
               lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q.unsqueeze(2), k, v, enable_gqa=True))
    x, w = rnd(1, 4096), rnd(4096)
    yield ("rms_norm H=4096 T=1", 2 * x.numel() * x.element_size(), lambda: ops.rms_norm(x, w),
           lambda: (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype) * w)
    x, gu, down = rnd(1, 4096), rnd(2 * 14336, 4096) * 0.02, rnd(4096, 14336) * 0.02
    yield ("gated_mlp llama3-8b T=1", 3 * down.numel() * down.element_size(), lambda: ops.gated_mlp(x, gu, down),
           lambda: F.linear(F.silu(F.linear(x, gu[:14336])) * F.linear(x, gu[14336:]), down))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "unknown"
    where = (torch.cuda.get_device_name() if args.device == "cuda"
             else f"cpu isa {ops.cpu_isa()}  threads {torch.get_num_threads()}  {platform.processor() or platform.machine()}")
    bw = copy_bandwidth(args.device, args.reps)
    print(f"bench_ops  commit {commit}  {where}  copy {bw / 1e9:.1f} GB/s")
    print(f"{'case':<46} {'dtype':<9} {'ours us':>10} {'torch us':>10} {'speed-up':>9} {'ours GB/s':>10} {'of copy':>8}")
    rows = []
    dtypes = (torch.float32, torch.bfloat16) + ((torch.float16,) if args.device == "cuda" else ())
    for dtype in dtypes:
        for name, nbytes, ours, ref in cases(dtype, args.device):
            t_ours, t_ref = median_s(ours, args.reps, args.device), median_s(ref, args.reps, args.device)
            rows.append(dict(case=name, dtype=str(dtype).replace("torch.", ""), ours_us=t_ours * 1e6,
                             torch_us=t_ref * 1e6, speedup=t_ref / t_ours, gbps=nbytes / t_ours / 1e9,
                             of_copy=nbytes / t_ours / bw))
            r = rows[-1]
            print(f"{name:<46} {r['dtype']:<9} {r['ours_us']:>10.1f} {r['torch_us']:>10.1f} {r['speedup']:>8.2f}x "
                  f"{r['gbps']:>10.1f} {r['of_copy']:>7.0%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(commit=commit, device=where, copy_gbps=bw / 1e9, threads=torch.get_num_threads(),
                           results=rows), f, indent=1)


if __name__ == "__main__":
    main()
