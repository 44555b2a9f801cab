"""The OpenAI-compatible servers under concurrent load: `pyruntime serve` against
`llama_cpp.server` (llama-cpp-python's), the same GGUF file, the same threads, one after the other
in the same run, driven by the official `openai` client.

    .venv/bin/python benchmarks/bench_server.py [--model FILE.gguf] [--concurrency 1 4 8 16 32]
        [--max-tokens 64] [--rounds 2] [--json benchmarks/results/<isa>/server.json]

At each concurrency C, C streams at a time (`rounds` x C requests in all to /v1/completions, each
of its own prompt, greedy, max_tokens; llama_cpp.server with --interrupt_requests False, else
each new request cuts the stream in progress short): total output tokens/s over the wall time, TTFT (request to first token) and
TPOT (time per output token after the first, per request) at p50 and p99. Output tokens are the
streamed chunks (one per token from both servers)."""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

from pyruntime import models
from pyruntime.generate import _physical_cores

SUBJECTS = ["rivers", "mountains", "bread", "the moon", "winter", "cats", "music", "the sea", "trees", "rain",
            "cities", "books", "coffee", "stars", "gardens", "trains"]


# llama_cpp.server without llama.cpp's extra CPU buffer types (AMX tiles, repacked rows):
# llama-cpp-python 0.3.36 dies with SIGSEGV in llama_decode with them on AMX hosts
# (benchmarks/compare.py's LlamaCpp says the same); elsewhere they are llama.cpp's default.
LLAMA_CPP_SERVER = """
import runpy, llama_cpp.llama_cpp as low
from pyruntime.cpu import cpu_features
if cpu_features()["features"].get("amx_tile"):
    default = low.llama_model_default_params
    def params():
        p = default()
        p.use_extra_bufts = False
        return p
    low.llama_model_default_params = params
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], url: str, ready: str) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[2]} exited with {proc.returncode}")
        try:
            if httpx.get(url + ready, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{cmd} did not start")


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


async def load(url: str, model: str, concurrency: int, rounds: int, max_tokens: int) -> dict:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    sem = asyncio.Semaphore(concurrency)
    ttft, tpot, tokens = [], [], []

    async def one(i):
        async with sem:
            t0 = time.perf_counter()
            first = last = None
            chunks = 0
            stream = await client.completions.create(
                model=model, max_tokens=max_tokens, temperature=0, stream=True,
                prompt=f"Story {i}. Once upon a time, in a land of {SUBJECTS[i % 16]},")
            async for c in stream:
                if c.choices:  # one chunk per token from both servers
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    chunks += 1
            n = chunks
            tokens.append(n)
            if first is not None:
                ttft.append(first - t0)
                if n > 1:
                    tpot.append((last - first) / (n - 1))

    t0 = time.perf_counter()
    await asyncio.gather(*[one(i) for i in range(concurrency * rounds)])
    wall = time.perf_counter() - t0
    await client.close()  # its connections closed on this loop, before asyncio.run closes it
    return {"concurrency": concurrency, "requests": concurrency * rounds, "output_tokens": sum(tokens),
            "wall_s": wall, "tokens_per_s": sum(tokens) / wall,
            "ttft_p50_ms": percentile(ttft, 0.5) * 1e3, "ttft_p99_ms": percentile(ttft, 0.99) * 1e3,
            "tpot_p50_ms": percentile(tpot, 0.5) * 1e3, "tpot_p99_ms": percentile(tpot, 0.99) * 1e3}


def run_server(name, cmd, url, ready, model, args) -> list[dict]:
    proc = start(cmd, url, ready)
    try:
        asyncio.run(load(url, model, 1, 1, 8))  # warm-up
        rows = []
        for c in args.concurrency:
            r = asyncio.run(load(url, model, c, args.rounds, args.max_tokens))
            rows.append(r)
            print(f"{name:<16} {c:>4} {r['tokens_per_s']:>9.1f} {r['ttft_p50_ms']:>9.0f} {r['ttft_p99_ms']:>9.0f} "
                  f"{r['tpot_p50_ms']:>9.1f} {r['tpot_p99_ms']:>9.1f}", flush=True)
        return rows
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="GGUF file (default: the bundled SmolLM2 Q4_1)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=_physical_cores())
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--skip-llama-cpp", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    gguf = Path(args.model) if args.model else models.bundled_gguf("smollm2-135m-instruct")
    print(f"{gguf.name}, {args.threads} threads, {_cpu_model()}, "
          f"max_tokens {args.max_tokens}, {args.rounds} x C requests per level")
    print(f"{'server':<16} {'C':>4} {'tok/s':>9} {'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9} {'TPOT p99':>9}")
    from pyruntime.cpu import cpu_features

    out = {"model": gguf.name, "threads": args.threads, "max_tokens": args.max_tokens, "rounds": args.rounds,
           "cpu": _cpu_model(), "isa": cpu_features()["isa"], "servers": {}}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out["servers"]["pyruntime"] = run_server(
        "pyruntime", [sys.executable, "-m", "pyruntime", "serve", str(gguf), "--port", str(port), "--threads",
                      str(args.threads), "--max-batch", str(args.max_batch), "--served-model-name", "m"],
        url, "/health", "m", args)
    if not args.skip_llama_cpp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        out["servers"]["llama_cpp.server"] = run_server(
            "llama_cpp.server", [sys.executable, "-c", LLAMA_CPP_SERVER, "--model", str(gguf), "--port", str(port),
                                 "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
                                 "--n_ctx", "4096", "--model_alias", "m", "--interrupt_requests", "False"],
            url, "/v1/models", "m", args)
    ours = {r["concurrency"]: r["tokens_per_s"] for r in out["servers"]["pyruntime"]}
    print("\npyruntime total tok/s at C over its own at 1: " +
          ", ".join(f"C={c}: {v / ours[min(ours)]:.2f}x" for c, v in ours.items()))
    if "llama_cpp.server" in out["servers"]:
        peer = {r["concurrency"]: r["tokens_per_s"] for r in out["servers"]["llama_cpp.server"]}
        print("pyruntime / llama_cpp.server total tok/s: " +
              ", ".join(f"C={c}: {ours[c] / peer[c]:.2f}x" for c in ours if c in peer))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
