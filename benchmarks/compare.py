"""pyruntime against its peers, in one run, on the same machine, weights and thread count.

    .venv/bin/pip install -r benchmarks/requirements.txt   # llama-cpp-python compiles (~12 min)
    .venv/bin/python benchmarks/compare.py [--reps 3] [--threads 2] [--out benchmarks/results]

Runtimes: pyruntime (float32, bfloat16, int8); llama.cpp through llama-cpp-python on GGUF
files re-quantised by llama.cpp itself from the bundled Q4_1 GGUF (F32, BF16, Q8_0: the same
dequantised weights pyruntime converts from that file); transformers (eager attention, KV
cache on, float32 and bfloat16). Figures: decode tokens/s at batch 1 (new tokens after a short
prompt), prefill tokens/s (a long prompt, first token included), time to first token; the
median of --reps repetitions, interleaved across runtimes; MBU against the read bandwidth
measured in the same run; decode tokens/s against context length (the median of --context-reps
sweeps, interleaved likewise) for the plot and MBU at the longest context.
Every repetition and sweep also records what else ran meanwhile (CPU time of other processes,
hypervisor steal: `contention` in the JSON; a warning is printed above a tenth of a core).
Writes compare.json and decode_vs_context.png under --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

import pyruntime
from pyruntime import models
from pyruntime._ext import C
from pyruntime.cpu import cpu_features, cpu_model
from pyruntime.bench import CpuContention, contention_warning

MODEL = "smollm2-135m-instruct"
DTYPES = ["float32", "bfloat16", "int8"]
GGUF_TYPE = {"float32": "F32", "bfloat16": "BF16", "int8": "Q8_0"}
PROMPT = "The history of every river is a story of water, stone and time. "


def prompt_ids(tokenizer, n):
    ids = tokenizer.encode(PROMPT)
    return (ids * (n // len(ids) + 1))[:n]


class Pyruntime:
    name = "pyruntime"

    def __init__(self, dtype, threads, max_seq):
        self.llm = pyruntime.LLM(MODEL, dtype=dtype, threads=threads, max_seq_len=max_seq, progress=False)
        cfg = self.llm.config
        kv_elem = torch.finfo(self.llm.kv_dtype).bits // 8
        self.weight_bytes = self.llm.weight_bytes
        self.kv_bytes_per_pos = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * kv_elem

    def prefill(self, ids):
        self.llm.logits(ids[:1])  # forget the cached prefix
        t = time.perf_counter()
        self.llm.generate(ids, max_new_tokens=1, ignore_eos=True)
        return time.perf_counter() - t

    def decode(self, ids, new):
        """(seconds to first token, decode tokens/s over new - 1 steps)."""
        self.llm.logits(ids[:1])
        st = self.llm.generate(ids, max_new_tokens=new, ignore_eos=True).stats
        return st.ttft_s, (new - 1) / sum(st.decode_step_s)


class LlamaCpp:
    """llama.cpp through llama-cpp-python. extra_buffers=False loads the weights without llama.cpp's
    extra CPU buffer types (AMX tiles, repacked Q4_0/Q4_K rows): llama-cpp-python 0.3.36 dies
    with SIGSEGV in llama_decode on the AVX-512 AMX build host when they hold quantized weights."""

    name = "llama.cpp"

    def __init__(self, dtype, threads, max_seq, gguf, extra_buffers=True):
        import llama_cpp
        import llama_cpp.llama_cpp as low

        default_params = low.llama_model_default_params
        if not extra_buffers:
            def params():
                p = default_params()
                p.use_extra_bufts = False
                return p

            low.llama_model_default_params = params
        try:
            self.llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=max_seq, n_batch=512, n_ubatch=512,
                                       n_threads=threads, n_threads_batch=threads, verbose=False)
        finally:
            low.llama_model_default_params = default_params
        self.weight_bytes = gguf.stat().st_size
        m = self.llm.metadata
        arch = m["general.architecture"]
        layers, heads = int(m[f"{arch}.block_count"]), int(m[f"{arch}.attention.head_count_kv"])
        head_dim = int(m[f"{arch}.embedding_length"]) // int(m[f"{arch}.attention.head_count"])
        self.kv_bytes_per_pos = 2 * layers * heads * head_dim * 2  # llama.cpp's default KV cache: f16

    def _next(self):
        # The last token's logits (llama-cpp-python keeps no copy of them without logits_all).
        return int(np.argmax(np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),))))

    def prefill(self, ids):
        self.llm.reset()
        t = time.perf_counter()
        self.llm.eval(ids)
        self._next()
        return time.perf_counter() - t

    def decode(self, ids, new):
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(ids)
        tok = self._next()
        t1 = time.perf_counter()
        for _ in range(new - 1):
            self.llm.eval([tok])
            tok = self._next()
        return t1 - t0, (new - 1) / (time.perf_counter() - t1)


class Transformers:
    name = "transformers"

    def __init__(self, dtype, threads, folder):
        import transformers

        dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        self.model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dt,
                                                                       attn_implementation="eager").eval()
        cfg = self.model.config
        self.weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.kv_bytes_per_pos = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * torch.finfo(dt).bits // 8

    @torch.inference_mode()
    def prefill(self, ids):
        t = time.perf_counter()
        out = self.model(torch.tensor([ids]), use_cache=True, logits_to_keep=1)
        int(out.logits[0, -1].argmax())
        return time.perf_counter() - t

    @torch.inference_mode()
    def decode(self, ids, new):
        t0 = time.perf_counter()
        out = self.model(torch.tensor([ids]), use_cache=True, logits_to_keep=1)
        tok = out.logits[0, -1].argmax().view(1, 1)
        t1 = time.perf_counter()
        for _ in range(new - 1):
            out = self.model(tok, past_key_values=out.past_key_values, use_cache=True)
            tok = out.logits[0, -1].argmax().view(1, 1)
        return t1 - t0, (new - 1) / (time.perf_counter() - t1)


def requantized_gguf(kind: str, cache: Path) -> Path:
    """The bundled GGUF re-quantised by llama.cpp's own quantize to F32, BF16 or Q8_0."""
    import llama_cpp

    out = cache / f"{MODEL}-{kind}.gguf"
    if not out.exists():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = {"F32": llama_cpp.LLAMA_FTYPE_ALL_F32, "BF16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16,
                        "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}[kind]
        params.allow_requantize = True
        params.nthread = 2
        tmp = out.with_suffix(".tmp")
        rc = llama_cpp.llama_model_quantize(str(models.bundled_gguf(MODEL)).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize to {kind} failed ({rc})")
        tmp.rename(out)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=16, help="prompt of the decode runs")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--contexts", default="128,512,1024,2048,4096")
    ap.add_argument("--context-new-tokens", type=int, default=32)
    ap.add_argument("--context-reps", type=int, default=3, help="repetitions of the decode-against-context sweep")
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--skip", default="", help="comma-separated runtimes to leave out (llama.cpp, transformers)")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/<this CPU's best kernel level>")
    a = ap.parse_args()
    out = Path(a.out or f"benchmarks/results/{C.best_cpu_isa()}")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(a.threads)
    contexts = [int(c) for c in a.contexts.split(",") if c]
    max_seq = max(contexts + [a.prefill_tokens, a.prompt_tokens]) + max(a.new_tokens, a.context_new_tokens) + 8
    max_seq = -(-max_seq // 256) * 256  # llama.cpp sizes its context in multiples of 256
    skip = set(a.skip.split(","))
    dtypes = a.dtypes.split(",")

    runtimes = []  # (dtype, runtime)
    for dtype in dtypes:
        runtimes.append((dtype, Pyruntime(dtype, a.threads, max_seq)))
    folder = runtimes[0][1].llm.path
    tokenizer = runtimes[0][1].llm.tokenizer
    for dtype in dtypes:
        if "llama.cpp" not in skip:
            runtimes.append((dtype, LlamaCpp(dtype, a.threads, max_seq, requantized_gguf(GGUF_TYPE[dtype], models.cache_root()))))
        if "transformers" not in skip and dtype != "int8":
            runtimes.append((dtype, Transformers(dtype, a.threads, folder)))

    bandwidth = [C.measure_read_bandwidth_gbps()]
    short, long_ = prompt_ids(tokenizer, a.prompt_tokens), prompt_ids(tokenizer, a.prefill_tokens)
    for _, rt in runtimes:  # warm-up
        rt.decode(short, 4)
        rt.prefill(short)
    samples = {(d, rt.name): {"ttft": [], "decode": [], "prefill": []} for d, rt in runtimes}
    contention = []  # per repetition and sweep: CPU time of other processes, hypervisor steal

    def note_contention(label, c):
        contention.append({"part": label, "other_cpu_cores": c.other_cores, "steal_cpu_cores": c.steal_cores})
        warning = contention_warning(c.other_cores, c.steal_cores)
        if warning:
            print(f"{label}: {warning}", flush=True)

    for rep in range(a.reps):
        with CpuContention() as busy:
            for dtype, rt in runtimes:
                s = samples[(dtype, rt.name)]
                # Every runtime starts alike: the previous one's worker threads gone idle (llama.cpp
                # and torch spin-wait after their calls), its own weights touched once more.
                time.sleep(0.5)
                rt.decode(short, 4)
                ttft, tps = rt.decode(short, a.new_tokens)
                s["ttft"].append(ttft)
                s["decode"].append(tps)
                s["prefill"].append(a.prefill_tokens / rt.prefill(long_))
                print(f"rep {rep}: {rt.name:<12} {dtype:<9} decode {tps:7.1f} tok/s  "
                      f"prefill {s['prefill'][-1]:7.1f} tok/s", flush=True)
        note_contention(f"rep {rep}", busy)
        bandwidth.append(C.measure_read_bandwidth_gbps())

    # Decode against context: --context-reps repetitions, interleaved across runtimes as above;
    # the figure is their median (MBU at the longest context is one of the targets).
    context_samples = {}
    for rep in range(a.context_reps):
        with CpuContention() as busy:
            for dtype, rt in runtimes:
                for ctx in contexts:
                    time.sleep(0.5)
                    rt.decode(short, 4)
                    _, tps = rt.decode(prompt_ids(tokenizer, ctx), a.context_new_tokens)
                    context_samples.setdefault(f"{rt.name} {dtype}", {}).setdefault(ctx, []).append(tps)
                    print(f"rep {rep} context {ctx:5d}: {rt.name:<12} {dtype:<9} {tps:7.1f} tok/s", flush=True)
        note_contention(f"context sweep {rep}", busy)
        bandwidth.append(C.measure_read_bandwidth_gbps())
    bw = statistics.median(bandwidth)
    by_context = {label: {ctx: statistics.median(v) for ctx, v in pts.items()} for label, pts in context_samples.items()}

    rows = []
    for dtype, rt in runtimes:
        s = samples[(dtype, rt.name)]
        tps = statistics.median(s["decode"])
        mean_ctx = a.prompt_tokens + a.new_tokens / 2
        per_token = rt.weight_bytes + rt.kv_bytes_per_pos * mean_ctx
        ctx_max = max(contexts)
        mbu_ctx = (rt.weight_bytes + rt.kv_bytes_per_pos * ctx_max) * by_context[f"{rt.name} {dtype}"][ctx_max] / (bw * 1e9)
        rows.append({"runtime": rt.name, "dtype": dtype, "weights": GGUF_TYPE[dtype] if rt.name == "llama.cpp" else dtype,
                     "decode_tokens_per_s": tps, "prefill_tokens_per_s": statistics.median(s["prefill"]),
                     "ttft_ms": 1e3 * statistics.median(s["ttft"]), "weight_bytes": rt.weight_bytes,
                     "bytes_per_token": per_token, "mbu": per_token * tps / (bw * 1e9),
                     f"mbu_at_{ctx_max}": mbu_ctx, "decode_samples": s["decode"], "prefill_samples": s["prefill"]})
    find = {(r["runtime"], r["dtype"]): r for r in rows}
    ratios = []
    for dtype in dtypes:
        ours = find[("pyruntime", dtype)]
        for peer in ("llama.cpp", "transformers"):
            if (peer, dtype) in find:
                p = find[(peer, dtype)]
                ratios.append({"dtype": dtype, "peer": peer, "decode": ours["decode_tokens_per_s"] / p["decode_tokens_per_s"],
                               "prefill": ours["prefill_tokens_per_s"] / p["prefill_tokens_per_s"],
                               "ttft": p["ttft_ms"] / ours["ttft_ms"]})
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "unknown"
    report = {"machine": cpu_model(), "isa": C.cpu_isa(), "cpu_features": cpu_features(), "threads": a.threads,
              "commit": commit, "read_bandwidth_gbps": bw, "bandwidth_samples": bandwidth, "reps": a.reps,
              "context_reps": a.context_reps,
              "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens, "prefill_tokens": a.prefill_tokens,
              "results": rows, "ratios": ratios, "decode_by_context": by_context,
              "decode_by_context_samples": context_samples, "contention": contention}
    (out / "compare.json").write_text(json.dumps(report, indent=1))

    print(f"\ncommit {commit}  threads {a.threads}  read bandwidth {bw:.1f} GB/s (median of {len(bandwidth)})")
    print(f"{'runtime':<13}{'weights':<10}{'decode tok/s':>13}{'MBU':>6}{f'MBU@{max(contexts)}':>10}"
          f"{'prefill tok/s':>15}{'TTFT ms':>9}")
    for r in rows:
        print(f"{r['runtime']:<13}{r['weights']:<10}{r['decode_tokens_per_s']:>13.1f}{100 * r['mbu']:>5.0f}%"
              f"{100 * r[f'mbu_at_{max(contexts)}']:>9.0f}%{r['prefill_tokens_per_s']:>15.1f}{r['ttft_ms']:>9.1f}")
    print(f"\n{'pyruntime vs':<14}{'dtype':<10}{'decode':>8}{'prefill':>9}{'TTFT':>7}")
    for r in ratios:
        print(f"{r['peer']:<14}{r['dtype']:<10}{r['decode']:>7.2f}x{r['prefill']:>8.2f}x{r['ttft']:>6.2f}x")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for label, pts in by_context.items():
        xs = sorted(pts)
        ax.plot(xs, [pts[x] for x in xs], marker="o", label=label,
                linestyle="-" if label.startswith("pyruntime") else "--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("decode tokens/s (batch 1)")
    ax.set_title(f"SmolLM2-135M decode, {a.threads} threads, {bw:.1f} GB/s read bandwidth ({commit})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "decode_vs_context.png", dpi=120)
    print(f"\nwrote {out / 'compare.json'} and {out / 'decode_vs_context.png'}")


if __name__ == "__main__":
    main()
