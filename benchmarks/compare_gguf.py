"""Quantized GGUF files, pyruntime against llama.cpp on the same file, same threads, same run.

    .venv/bin/pip install -r benchmarks/requirements.txt   # llama-cpp-python
    .venv/bin/python benchmarks/compare_gguf.py [--formats Q4_0,Q4_K_M,Q5_K_M,Q6_K,Q8_0] [--with-1b]

The files: llama.cpp's own quantize (llama_cpp.llama_model_quantize) from an F32 GGUF: the bundled
SmolLM2-135M (its Q4_1 file requantized to F32 first; its 576-wide rows are not a multiple of 256,
so llama.cpp puts those tensors of the k-quant files in other types) and, with --with-1b, a model
of Llama-3.2-1B's shapes (hidden 2048, 16 layers, 32 query / 8 KV heads, intermediate 8192,
vocabulary 128256) with random weights written by the gguf package, whose weights are far larger
than the cache. pyruntime runs each file in its own types (dtype="gguf", bfloat16 KV cache; decode
steps against 8-bit activations where the block type has integer products; prompts against
16-bit ones there on CPUs with AVX512-VNNI and without AMX, float32 elsewhere; and, where the CPU
has the integer GEMM with 8-bit activations (AVX2 too), a prefill row of its own with them,
llama.cpp's numerics);
llama.cpp as llama-cpp-python builds it (8-bit activations, f16 KV cache),
without its extra CPU buffer types unless --llama-extra-buffers (see compare.LlamaCpp).
Figures: decode tokens/s at batch 1 (new tokens after a short prompt; for the 1B model also
after contexts of 512 and 4096), prefill tokens/s of 512 tokens; medians of --reps
repetitions interleaved across runtimes; MBU = (weights read per token + KV cache read per
token) x tokens/s / the read bandwidth measured in the same run. Writes compare_gguf.json
under --out (default benchmarks/results/<this CPU's best kernel level>).
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
from pyruntime.bench import CpuContention, contention_warning, weight_bytes_read
from pyruntime.cpu import cpu_features, cpu_model

import compare
from compare import LlamaCpp, prompt_ids

FORMATS = ["Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"]


class Pyruntime(compare.Pyruntime):
    """compare.Pyruntime on a GGUF file in its own types (prefill and decode timed alike)."""

    def __init__(self, gguf: Path, threads: int, max_seq: int):
        self.llm = pyruntime.LLM(gguf, threads=threads, max_seq_len=max_seq, progress=False)
        cfg = self.llm.config
        self.weight_bytes = weight_bytes_read(self.llm.engine.spec)
        self.kv_bytes_per_pos = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2  # bfloat16


def quantize(src: Path, kind: str, out: Path) -> Path:
    """src requantized by llama.cpp's quantize to `kind` (F32, Q4_0, Q4_K_M, ...), cached at out."""
    import llama_cpp

    if not out.exists():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_ALL_F32" if kind == "F32" else f"LLAMA_FTYPE_MOSTLY_{kind}")
        params.allow_requantize = True
        params.nthread = 2
        tmp = out.with_suffix(".tmp")
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize of {src} to {kind} failed ({rc})")
        tmp.rename(out)
    return out


def write_llama_1b(path: Path) -> Path:
    """A GGUF of Llama-3.2-1B's shapes, random F16 weights (std 0.02), the bundled model's
    tokenizer padded with unused tokens to 128256."""
    import gguf

    if path.exists():
        return path
    src = gguf.GGUFReader(str(models.bundled_gguf("smollm2-135m-instruct")))
    L, H, I, HQ, HKV, D, V = 16, 2048, 8192, 32, 8, 64, 128256
    w = gguf.GGUFWriter(str(path.with_suffix(".tmp")), arch="llama")
    w.add_block_count(L)
    w.add_context_length(8192)
    w.add_embedding_length(H)
    w.add_feed_forward_length(I)
    w.add_head_count(HQ)
    w.add_head_count_kv(HKV)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(D)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens = src.fields["tokenizer.ggml.tokens"].contents()
    types = src.fields["tokenizer.ggml.token_type"].contents()
    extra = V - len(tokens)
    w.add_tokenizer_model(src.fields["tokenizer.ggml.model"].contents())
    w.add_tokenizer_pre(src.fields["tokenizer.ggml.pre"].contents())
    w.add_token_list(tokens + [f"<|unused_{i}|>" for i in range(extra)])
    w.add_token_types(types + [gguf.TokenType.USER_DEFINED] * extra)
    w.add_token_merges(src.fields["tokenizer.ggml.merges"].contents())
    for key in ("bos_token_id", "eos_token_id"):
        w.add_uint32(f"tokenizer.ggml.{key}", int(src.fields[f"tokenizer.ggml.{key}"].contents()))
    rng = np.random.default_rng(0)

    def rnd(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    w.add_tensor("token_embd.weight", rnd(V, H))
    w.add_tensor("output_norm.weight", np.ones(H, dtype=np.float32))
    w.add_tensor("output.weight", rnd(V, H))
    for i in range(L):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(H, dtype=np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(H, dtype=np.float32))
        w.add_tensor(p + "attn_q.weight", rnd(HQ * D, H))
        w.add_tensor(p + "attn_k.weight", rnd(HKV * D, H))
        w.add_tensor(p + "attn_v.weight", rnd(HKV * D, H))
        w.add_tensor(p + "attn_output.weight", rnd(H, HQ * D))
        w.add_tensor(p + "ffn_gate.weight", rnd(I, H))
        w.add_tensor(p + "ffn_up.weight", rnd(I, H))
        w.add_tensor(p + "ffn_down.weight", rnd(H, I))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    path.with_suffix(".tmp").rename(path)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--with-1b", action="store_true", help="also the random model of Llama-3.2-1B's shapes")
    ap.add_argument("--contexts-1b", default="512,4096")
    ap.add_argument("--llama-extra-buffers", action="store_true",
                    help="let llama.cpp put weights in its extra CPU buffer types (AMX, repacked rows); off by "
                         "default: llama-cpp-python 0.3.36 crashes with them on the AVX-512 AMX build host")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    out = Path(a.out or f"benchmarks/results/{C.best_cpu_isa()}")
    out.mkdir(parents=True, exist_ok=True)
    cache = models.cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(a.threads)
    formats = a.formats.split(",")

    sources = {"smollm2-135m": (quantize(models.bundled_gguf("smollm2-135m-instruct"), "F32",
                                         cache / "smollm2-135m-F32.gguf"), [])}
    if a.with_1b:
        sources["llama-1b-shape"] = (write_llama_1b(cache / "llama-1b-shape-F16.gguf"),
                                     [int(c) for c in a.contexts_1b.split(",") if c])
    rows, contention, bandwidth = [], [], [C.measure_read_bandwidth_gbps()]
    for model, (src, contexts) in sources.items():
        max_seq = -(-(max(contexts + [a.prefill_tokens, a.prompt_tokens]) + a.new_tokens + 8) // 256) * 256
        for fmt in formats:
            gguf = quantize(src, fmt, cache / f"{model}-{fmt}.gguf")
            ours = Pyruntime(gguf, a.threads, max_seq)
            runtimes = [ours, LlamaCpp("gguf", a.threads, max_seq, gguf, extra_buffers=a.llama_extra_buffers)]
            runtimes[1].weight_bytes = ours.weight_bytes  # the same file, the same tensors read
            tok = ours.llm.tokenizer
            short, long_ = prompt_ids(tok, a.prompt_tokens), prompt_ids(tok, a.prefill_tokens)
            cases = [("decode", short)] + [(f"decode@{c}", prompt_ids(tok, c)) for c in contexts]
            samples = {(rt.name, case): [] for rt in runtimes for case, _ in cases + [("prefill", None)]}
            eight_bit = C.int8_prompt_products()  # the prompts' GEMM on 8-bit activations too
            samples[("pyruntime", "prefill8")] = []
            for rt in runtimes:  # warm-up
                rt.decode(short, 4)
            for rep in range(a.reps):
                with CpuContention() as busy:
                    for rt in runtimes:
                        for case, ids in cases:
                            time.sleep(0.3)
                            samples[(rt.name, case)].append(rt.decode(ids, a.new_tokens)[1])
                        samples[(rt.name, "prefill")].append(a.prefill_tokens / rt.prefill(long_))
                        if rt is ours and eight_bit:
                            ours.llm.engine.prompt_bits = 8
                            samples[("pyruntime", "prefill8")].append(a.prefill_tokens / rt.prefill(long_))
                            ours.llm.engine.prompt_bits = 16
                contention.append({"part": f"{model} {fmt} rep {rep}", "other_cpu_cores": busy.other_cores,
                                   "steal_cpu_cores": busy.steal_cores})
                warning = contention_warning(busy.other_cores, busy.steal_cores)
                if warning:
                    print(f"{model} {fmt} rep {rep}: {warning}", flush=True)
                bandwidth.append(C.measure_read_bandwidth_gbps())
            for rt in runtimes:
                for case, ids in cases:
                    tps = statistics.median(samples[(rt.name, case)])
                    ctx = len(ids) + a.new_tokens / 2
                    per_token = rt.weight_bytes + rt.kv_bytes_per_pos * ctx
                    rows.append({"model": model, "format": fmt, "runtime": rt.name, "case": case,
                                 "tokens_per_s": tps, "bytes_per_token": per_token, "samples": samples[(rt.name, case)],
                                 "file_bytes": gguf.stat().st_size,
                                 "weight_formats": ours.llm.weight_formats if rt is ours else None})
                p = samples[(rt.name, "prefill")]
                rows.append({"model": model, "format": fmt, "runtime": rt.name, "case": f"prefill {a.prefill_tokens}",
                             "tokens_per_s": statistics.median(p), "samples": p})
                if rt is ours and eight_bit:  # against llama.cpp's prefill row
                    p = samples[("pyruntime", "prefill8")]
                    rows.append({"model": model, "format": fmt, "runtime": rt.name,
                                 "case": f"prefill {a.prefill_tokens} 8-bit", "peer_case": f"prefill {a.prefill_tokens}",
                                 "tokens_per_s": statistics.median(p), "samples": p})
            print(f"{model} {fmt}: " + "  ".join(
                f"{case} {statistics.median(samples[('pyruntime', case)]):.1f} vs "
                f"{statistics.median(samples[('llama.cpp', case)]):.1f}" for case in [c for c, _ in cases] + ["prefill"]),
                flush=True)
            del runtimes, ours

    bw = statistics.median(bandwidth)  # every row's MBU against the median of all the run's probes
    for r in rows:
        if "bytes_per_token" in r:
            r["mbu"] = r["bytes_per_token"] * r["tokens_per_s"] / (bw * 1e9)
    find = {(r["model"], r["format"], r["runtime"], r["case"]): r for r in rows}
    peer = lambda r: find[(r["model"], r["format"], "llama.cpp", r.get("peer_case", r["case"]))]  # noqa: E731
    ratios = [{"model": r["model"], "format": r["format"], "case": r["case"],
               "ratio": r["tokens_per_s"] / peer(r)["tokens_per_s"]}
              for r in rows if r["runtime"] == "pyruntime"]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "unknown"
    report = {"machine": cpu_model(), "isa": C.cpu_isa(), "cpu_features": cpu_features(), "threads": a.threads,
              "commit": commit, "llama_extra_buffers": a.llama_extra_buffers, "read_bandwidth_gbps": bw, "bandwidth_samples": bandwidth, "reps": a.reps,
              "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens, "results": rows, "ratios": ratios,
              "contention": contention}
    (out / "compare_gguf.json").write_text(json.dumps(report, indent=1))
    print(f"\ncommit {commit}  {cpu_model()}  kernels {C.cpu_isa()}  threads {a.threads}  "
          f"read bandwidth {bw:.1f} GB/s")
    print(f"{'model':<16}{'format':<8}{'case':<20}{'pyruntime':>10}{'MBU':>6}{'llama.cpp':>11}{'MBU':>6}{'ratio':>8}")
    for r in ratios:
        o = find[(r["model"], r["format"], "pyruntime", r["case"])]
        p = peer(o)
        mbu = lambda x: f"{100 * x['mbu']:>5.0f}%" if "mbu" in x else "      "  # noqa: E731
        print(f"{r['model']:<16}{r['format']:<8}{r['case']:<20}{o['tokens_per_s']:>10.1f}{mbu(o)}"
              f"{p['tokens_per_s']:>11.1f}{mbu(p)}{r['ratio']:>7.2f}x")
    print(f"\nwrote {out / 'compare_gguf.json'}")


if __name__ == "__main__":
    main()
