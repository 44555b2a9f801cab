"""`pyruntime bench`: decode latency of one sequence, with the machine's bandwidth measured
in the same run: TTFT, time per output token p50/p90/p99, tokens/s and model bandwidth
utilisation (MBU = bytes read per token x tokens/s / measured read bandwidth). On CUDA
(`--device cuda`) the bandwidth is the GPU's, from a device-to-device copy."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class CpuContention:
    """What else ran on this machine's CPUs while the `with` block ran, from /proc/stat and
    /proc/self/stat (Linux): `other_cores`, the CPU time of every other process divided by the
    wall time (0.5: half a core busy elsewhere on average), and `steal_cores`, the time the
    hypervisor ran something else while this guest's CPUs wanted to run. Both stay None where
    /proc is not there. Figures taken while either is more than a small fraction of a core
    understate the machine: the engine's threads wait at every barrier for a descheduled one."""

    other_cores: float | None = None
    steal_cores: float | None = None

    @staticmethod
    def _snapshot():
        with open("/proc/stat") as f:
            cpu = [int(v) for v in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            mine = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        # /proc/stat: user nice system idle iowait irq softirq steal ...; /proc/self/stat fields
        # 14 and 15 (utime, stime) are the 12th and 13th after the name.
        busy = cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6]
        return time.monotonic(), busy, cpu[7] if len(cpu) > 7 else 0, int(mine[11]) + int(mine[12])

    def __enter__(self):
        try:
            self._start = self._snapshot()
        except (OSError, ValueError, IndexError):
            self._start = None
        return self

    def __exit__(self, *exc):
        if self._start is None:
            return False
        try:
            end = self._snapshot()
        except (OSError, ValueError, IndexError):
            return False
        wall = end[0] - self._start[0]
        if wall > 0:
            tick = os.sysconf("SC_CLK_TCK")
            busy, steal, mine = (end[i] - self._start[i] for i in (1, 2, 3))
            self.other_cores = max(0.0, (busy - mine) / tick / wall)
            self.steal_cores = steal / tick / wall
        return False


def measure_cuda_bandwidth_gbps(nbytes: int = 1 << 30) -> float:
    """GPU memory bandwidth: bytes read plus written per second by a device-to-device copy of
    nbytes (the median of 5 after a warm-up), the figure MBU is taken against on CUDA."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * src.numel() * 4 / statistics.median(times) / 1e9


def weight_bytes_read(spec) -> int:
    """Bytes of weights one decode token reads, from an engine's model description (C.ModelSpec):
    every distinct tensor once, except the embedding table, of which a token gathers only its own
    row (1/vocab of its values and scales). A tied LM head is that same table, which the LM head
    reads whole: counted once as the LM head, plus the gathered row."""
    embed = spec.embed.nbytes
    tied = spec.embed.data.data_ptr() == spec.lm_head.data.data_ptr()
    return spec.nbytes - (0 if tied else embed) + embed // spec.vocab


def decode_bytes_per_token(llm, context: float) -> float:
    """Bytes one decode step of one sequence reads with `context` positions in its KV cache: the
    weights (weight_bytes_read of the engine's spec: the embedding's one row, not its table)
    and the K and V of every position each layer attends (a sliding window's last positions)."""
    cfg = llm.config
    elem = torch.finfo(llm.kv_dtype).bits // 8
    per_pos = 2 * cfg.num_kv_heads * cfg.head_dim * elem
    seen = sum(min(context, layer.sliding_window or context) for layer in llm.engine.spec.layers)
    return weight_bytes_read(llm.engine.spec) + per_pos * seen


def run_bench(llm, prompt_tokens: int = 128, new_tokens: int = 128, reps: int = 3) -> dict:
    """Measures `reps` generations of new_tokens after a prompt of prompt_tokens tokens."""
    from pyruntime._ext import C
    from pyruntime.cpu import cpu_features
    from pyruntime.cpu import describe as cpu_describe

    if prompt_tokens < 1 or new_tokens < 2 or reps < 1:
        raise ValueError("prompt_tokens >= 1, new_tokens >= 2 and reps >= 1 are needed")
    if prompt_tokens + new_tokens > llm.max_seq_len:
        raise ValueError(f"prompt_tokens + new_tokens exceeds max_seq_len {llm.max_seq_len}")
    text_ids = llm.tokenizer.encode("The history of every river is a story of water, stone and time. ")
    ids = (text_ids * (prompt_tokens // len(text_ids) + 1))[:prompt_tokens]
    llm.generate(ids, max_new_tokens=4, ignore_eos=True)  # warm-up
    runs = []
    with CpuContention() as contention:
        for _ in range(reps):
            llm.logits(ids[:1])  # replace the cached prefix: every rep prefills the whole prompt
            runs.append(llm.generate(ids, max_new_tokens=new_tokens, ignore_eos=True).stats)
    cuda = llm.device == "cuda"
    bandwidth = measure_cuda_bandwidth_gbps() if cuda else C.measure_read_bandwidth_gbps()
    steps = [s for st in runs for s in st.decode_step_s]
    bytes_per_token = decode_bytes_per_token(llm, prompt_tokens + new_tokens / 2)  # the mean context
    tps = statistics.median(st.decode_tokens_per_s for st in runs)
    return {
        "model": str(llm.path), "dtype": llm.dtype, "threads": llm.threads, "commit": _commit(),
        "device": llm.device, "cpu": platform.processor() or platform.machine(), "isa": C.cpu_isa(),
        "cpu_kernels": None if cuda else cpu_describe(), "cpu_features": None if cuda else cpu_features(),
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "reps": reps,
        "ttft_ms": statistics.median(st.ttft_s for st in runs) * 1e3,
        "prefill_tokens_per_s": prompt_tokens / statistics.median(st.ttft_s for st in runs),
        "tpot_ms_p50": _percentile(steps, 50) * 1e3,
        "tpot_ms_p90": _percentile(steps, 90) * 1e3,
        "tpot_ms_p99": _percentile(steps, 99) * 1e3,
        "decode_tokens_per_s": tps,
        "weight_bytes": llm.weight_bytes,
        "weight_formats": llm.weight_formats,
        "weight_bytes_per_token": weight_bytes_read(llm.engine.spec),
        "kv_cache_bytes": llm.kv_cache_bytes,
        "bytes_per_token": bytes_per_token,
        "read_bandwidth_gbps": bandwidth,
        "mbu": bytes_per_token * tps / (bandwidth * 1e9),
        "other_cpu_cores": contention.other_cores,
        "steal_cpu_cores": contention.steal_cores,
    }


def contention_warning(other_cores: float | None, steal_cores: float | None, threshold: float = 0.1) -> str | None:
    """A line saying the machine was busy elsewhere during a measurement, or None."""
    if other_cores is None or (other_cores < threshold and (steal_cores or 0.0) < threshold):
        return None
    return (f"warning: other processes used {other_cores:.2f} cores and the hypervisor stole "
            f"{steal_cores or 0.0:.2f} on average while this ran: the figures understate this machine "
            "(sharing it, give pyruntime fewer threads; see README, `threads`)")


def contention_lines(r: dict) -> list[str]:
    """The report lines on what else ran during a measurement (r's other_cpu_cores and
    steal_cpu_cores): none where they were not measured, else the figures and any warning."""
    if r.get("other_cpu_cores") is None:
        return []
    warning = contention_warning(r["other_cpu_cores"], r["steal_cpu_cores"])
    return [f"elsewhere       other processes {r['other_cpu_cores']:.2f} cores, hypervisor steal "
            f"{r['steal_cpu_cores']:.2f} cores (averages over the timed runs)"] + ([warning] if warning else [])


def format_report(r: dict) -> str:
    lines = [
        f"pyruntime bench  commit {r['commit']}  "
        + (f"{r['gpu']} (cuda)" if r.get("gpu") else f"{r['cpu']} ({r['isa']})  threads {r['threads']}"),
        f"model {r['model']}  dtype {r['dtype']}",
    ] + ([f"CPU {r['cpu_kernels']}"] if r.get("cpu_kernels") else []) + [
        f"weights {r['weight_bytes'] / 1e6:.1f} MB ("
        + ", ".join(f"{n} {f}" for f, n in r.get("weight_formats", {}).items()) + " matrices), "
        f"{r.get('weight_bytes_per_token', r['weight_bytes']) / 1e6:.1f} MB read per token  "
        f"KV cache {r['kv_cache_bytes'] / 1e6:.1f} MB (allocated for max_seq_len)",
        f"prompt {r['prompt_tokens']} tokens, {r['new_tokens']} new tokens, median of {r['reps']}",
        f"TTFT            {r['ttft_ms']:.1f} ms  (prefill {r['prefill_tokens_per_s']:.0f} tokens/s)",
        f"TPOT p50/p90/p99 {r['tpot_ms_p50']:.2f} / {r['tpot_ms_p90']:.2f} / {r['tpot_ms_p99']:.2f} ms",
        f"decode          {r['decode_tokens_per_s']:.1f} tokens/s",
        f"MBU             {100 * r['mbu']:.0f}%  ({r['bytes_per_token'] / 1e6:.0f} MB/token, "
        f"{'copy' if r.get('gpu') else 'read'} bandwidth {r['read_bandwidth_gbps']:.1f} GB/s measured now)",
    ]
    return "\n".join(lines + contention_lines(r))


def write_json(r: dict, path: str) -> None:
    Path(path).write_text(json.dumps(r, indent=1))
