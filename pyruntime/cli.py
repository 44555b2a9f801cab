"""`pyruntime generate | chat | bench | profile | serve | convert`: the command line."""

from __future__ import annotations

import argparse
import sys

DEFAULT_MODEL = "smollm2-135m-instruct"


def _model_args(p):
    p.add_argument("--model", "-m", default=DEFAULT_MODEL,
                   help=f"model folder, .gguf file or bundled model name (default: {DEFAULT_MODEL})")
    p.add_argument("--dtype", default=None, choices=["gguf", "float32", "bfloat16", "int8", "int4"],
                   help="weights: gguf (a GGUF model's own types; the default for GGUF files and bundled "
                        "models), float32 (the default for folders), bfloat16, int8 or int4 (quantized at load)")
    p.add_argument("--kv-dtype", default=None, choices=["float32", "bfloat16"],
                   help="KV cache type (default: bfloat16 for gguf, int8 and int4; the weights' dtype otherwise)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    p.add_argument("--max-seq-len", type=int, default=None)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cpu (default) or cuda (a CUDA build and GPU; bfloat16 runs the CUDA engine, float32 the ops)")


def _sampling_args(p):
    p.add_argument("--max-new-tokens", "-n", type=int, default=256)
    p.add_argument("--temperature", "-t", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")


def _sampling(ns) -> dict:
    return dict(max_new_tokens=ns.max_new_tokens, temperature=ns.temperature, top_k=ns.top_k, top_p=ns.top_p,
                min_p=ns.min_p, repetition_penalty=ns.repetition_penalty, seed=ns.seed, stop=ns.stop)


def _load(ns):
    from pyruntime import LLM

    return LLM(ns.model, dtype=ns.dtype, max_seq_len=ns.max_seq_len, threads=ns.threads, device=ns.device,
               kv_dtype=ns.kv_dtype)


def cmd_generate(ns) -> int:
    llm = _load(ns)
    prompt = ns.prompt
    if not ns.raw and llm.tokenizer.chat_template:
        # Token ids, as transformers encodes a rendered chat: the template writes BOS itself.
        prompt = llm.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True)
    for piece in llm.stream(prompt, **_sampling(ns)):
        print(piece, end="", flush=True)
    print()
    return 0


def cmd_chat(ns) -> int:
    llm = _load(ns)
    messages = [{"role": "system", "content": ns.system}] if ns.system else []
    print("pyruntime chat: an empty line or Ctrl-D ends the conversation.", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not line.strip():
            return 0
        messages.append({"role": "user", "content": line})
        # The rendered history starts with the previous turns' tokens, so their KV cache
        # entries are reused and only the new turn is prefilled.
        reply = ""
        for piece in llm.stream(llm.tokenizer.apply_chat_template(messages, tokenize=True), **_sampling(ns)):
            reply += piece
            print(piece, end="", flush=True)
        print()
        messages.append({"role": "assistant", "content": reply})


def cmd_bench(ns) -> int:
    from pyruntime.bench import format_report, run_bench, write_json

    report = run_bench(_load(ns), prompt_tokens=ns.prompt_tokens, new_tokens=ns.new_tokens, reps=ns.reps)
    print(format_report(report))
    if ns.json:
        write_json(report, ns.json)
    return 0


def cmd_profile(ns) -> int:
    from pyruntime.profile import format_profile, run_profile

    if ns.device != "cpu":
        raise ValueError("profile times the CPU engine's phases from inside it; on a GPU use "
                         "benchmarks/bench_cuda_engine.py (CUDA graph step and kernel times) or nsys")
    report = run_profile(_load(ns), prompt_tokens=ns.prompt_tokens, new_tokens=ns.new_tokens, trace=ns.trace)
    print(format_profile(report))
    if ns.trace:
        print(f"wrote {ns.trace}")
    return 0


def cmd_convert(ns) -> int:
    from pyruntime.convert import convert_gguf

    out = convert_gguf(ns.gguf, ns.out_dir, dequantize=ns.dequantize)
    print(f"wrote {out}")
    return 0


def cmd_serve(ns) -> int:
    from pathlib import Path

    from pyruntime.server import serve

    if ns.model_arg:
        ns.model = ns.model_arg
    name = ns.served_model_name or (ns.model if ns.model == DEFAULT_MODEL else Path(ns.model).name)
    if ns.ray:
        from pyruntime.generate import _physical_cores
        from pyruntime.ray_serve import serve_ray

        threads = ns.threads or max(1, _physical_cores() // ns.replicas)
        serve_ray(ns.model, name, ns.host, ns.port, ns.replicas, threads, ns.max_batch, ns.api_key,
                  dict(dtype=ns.dtype, max_seq_len=ns.max_seq_len, device=ns.device, kv_dtype=ns.kv_dtype),
                  address=ns.ray_address)
        return 0
    llm = _load(ns)
    serve(llm, name, host=ns.host, port=ns.port, max_batch=ns.max_batch, api_key=ns.api_key)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyruntime", description="Run Llama-family LLMs on pyruntime's kernels.")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate a completion for a prompt (streamed)")
    g.add_argument("prompt")
    g.add_argument("--raw", action="store_true", help="use the prompt as is, without the chat template")
    _model_args(g)
    _sampling_args(g)
    g.set_defaults(func=cmd_generate)
    c = sub.add_parser("chat", help="interactive chat that reuses the KV cache of earlier turns")
    c.add_argument("--system", default=None, help="system message")
    _model_args(c)
    _sampling_args(c)
    c.set_defaults(func=cmd_chat)
    b = sub.add_parser("bench", help="decode latency: TTFT, TPOT p50/p90/p99, tokens/s, MBU")
    _model_args(b)
    b.add_argument("--prompt-tokens", type=int, default=128)
    b.add_argument("--new-tokens", type=int, default=128)
    b.add_argument("--reps", type=int, default=3)
    b.add_argument("--json", default=None, help="also write the figures to this JSON file")
    b.set_defaults(func=cmd_bench)
    pr = sub.add_parser("profile", help="per-op share of the decode step, timed inside the engine")
    _model_args(pr)
    pr.add_argument("--prompt-tokens", type=int, default=128)
    pr.add_argument("--new-tokens", type=int, default=32)
    pr.add_argument("--trace", default=None, help="write a Chrome/Perfetto trace (JSON) here")
    pr.set_defaults(func=cmd_profile)
    sv = sub.add_parser("serve", help="an OpenAI-compatible HTTP server with continuous batching")
    sv.add_argument("model_arg", nargs="?", default=None, metavar="MODEL", help="as --model")
    _model_args(sv)
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-batch", type=int, default=16, help="sequences decoded together (KV cache slots)")
    sv.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY")
    sv.add_argument("--served-model-name", default=None, help="the model id of /v1/models (default: the model's name)")
    sv.add_argument("--ray", action="store_true", help="serve as a Ray Serve deployment of --replicas replicas")
    sv.add_argument("--replicas", type=int, default=2, help="with --ray: model replicas (processes)")
    sv.add_argument("--ray-address", default=None,
                    help="with --ray: an existing Ray cluster ('auto', or HEAD:6379); default: a local one")
    sv.set_defaults(func=cmd_serve)
    v = sub.add_parser("convert", help="convert a Llama-family GGUF file to a Hugging Face style folder")
    v.add_argument("gguf")
    v.add_argument("out_dir")
    v.add_argument("--dequantize", action="store_true",
                   help="write float32 safetensors instead of keeping the GGUF file's tensor types")
    v.set_defaults(func=cmd_convert)
    return parser


def main(argv=None) -> int:
    ns = build_parser().parse_args(argv)
    from pyruntime.errors import ModelLoadError

    try:
        return ns.func(ns)
    except (ModelLoadError, ValueError) as e:
        print(f"pyruntime: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
