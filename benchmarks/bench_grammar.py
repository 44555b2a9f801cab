"""JSON-schema constrained decoding: llguidance against xgrammar on the bundled model's
vocabulary (49152 tokens), the cost per generated token of the token mask (compute the allowed
tokens, then accept the chosen one) and the cost of compiling a schema. Each schema's valid
document is tokenized and fed token by token, as a model's output would be.

    .venv/bin/python benchmarks/bench_grammar.py [--reps 5]

Prints medians over the tokens and repetitions, per library and schema (xgrammar needs
`pip install --no-deps xgrammar apache-tvm-ffi`; llguidance is what pyruntime uses)."""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import pyruntime

SCHEMAS = {
    "person": ({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                                 "email": {"type": "string"}},
                "required": ["name", "age", "email"], "additionalProperties": False},
               {"name": "Ada Lovelace", "age": 36, "email": "ada@example.org"}),
    "enum+array": ({"type": "object", "properties": {
        "colour": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        "score": {"type": "number"}}, "required": ["colour", "tags", "score"], "additionalProperties": False},
        {"colour": "green", "tags": ["a", "bb", "ccc"], "score": 0.75}),
    "nested": ({"type": "object", "properties": {"items": {"type": "array", "items": {
        "type": "object", "properties": {"id": {"type": "integer"}, "ok": {"type": "boolean"}},
        "required": ["id", "ok"], "additionalProperties": False}}}, "required": ["items"],
        "additionalProperties": False},
        {"items": [{"id": i, "ok": i % 2 == 0} for i in range(8)]}),
}


def bench_llguidance(tok_json, eos, vocab, schema, ids, reps):
    import llguidance
    import llguidance.torch as lt

    t0 = time.perf_counter()
    lltok = llguidance.LLTokenizer(tok_json, n_vocab=vocab, eos_token=eos)
    tok_s = time.perf_counter() - t0
    compile_s, step_s = [], []
    mask = lt.allocate_token_bitmask(1, vocab)
    for _ in range(reps):
        t0 = time.perf_counter()
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults={"whitespace_flexible": False})
        m = llguidance.LLMatcher(lltok, grammar)
        compile_s.append(time.perf_counter() - t0)
        for t in ids:
            t0 = time.perf_counter()
            lt.fill_next_token_bitmask(m, mask)
            assert (mask[0, t // 32] >> (t % 32)) & 1, "the document's token is masked out"
            assert m.consume_token(t), m.get_error()
            step_s.append(time.perf_counter() - t0)
    return tok_s, compile_s, step_s


def bench_xgrammar(hf_tok, vocab, schema, ids, reps):
    import xgrammar as xgr

    t0 = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(hf_tok, vocab_size=vocab)
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    tok_s = time.perf_counter() - t0
    compile_s, step_s = [], []
    mask = xgr.allocate_token_bitmask(1, vocab)
    for _ in range(reps):
        t0 = time.perf_counter()
        compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(",", ":"))
        m = xgr.GrammarMatcher(compiled)
        compile_s.append(time.perf_counter() - t0)
        for t in ids:
            t0 = time.perf_counter()
            m.fill_next_token_bitmask(mask)
            assert (mask[0, t // 32] >> (t % 32)) & 1, "the document's token is masked out"
            assert m.accept_token(t)
            step_s.append(time.perf_counter() - t0)
    return tok_s, compile_s, step_s


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    llm_tok = pyruntime.LLM("smollm2-135m-instruct", progress=False).tokenizer
    tok_json = llm_tok._tok.to_str()
    vocab = llm_tok.vocab_size
    eos = llm_tok.token_id(llm_tok.eos_token)
    try:
        import transformers
        import xgrammar  # noqa: F401

        hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=llm_tok._tok, eos_token=llm_tok.eos_token)
    except ImportError:
        hf_tok = None
    print(f"torch {torch.__version__}, vocabulary {vocab}; medians over {args.reps} repetitions")
    print(f"{'schema':<12} {'library':<11} {'tokens':>6} {'compile ms':>11} {'mask+accept us/token':>21} {'p99 us':>8}")
    for name, (schema, doc) in SCHEMAS.items():
        ids = llm_tok.encode(json.dumps(doc, separators=(",", ":")), add_special_tokens=False)
        runs = [("llguidance", lambda: bench_llguidance(tok_json, eos, vocab, schema, ids, args.reps))]
        if hf_tok is not None:
            runs.append(("xgrammar", lambda: bench_xgrammar(hf_tok, vocab, schema, ids, args.reps)))
        for lib, run in runs:
            _, compile_s, step_s = run()
            p99 = sorted(step_s)[int(0.99 * (len(step_s) - 1))]
            print(f"{name:<12} {lib:<11} {len(ids):>6} {statistics.median(compile_s) * 1e3:>11.2f} "
                  f"{statistics.median(step_s) * 1e6:>21.1f} {p99 * 1e6:>8.1f}")


if __name__ == "__main__":
    main()
