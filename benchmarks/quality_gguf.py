"""How close pyruntime's logits on quantized GGUF files are to transformers loading the same file
(which dequantizes it with the gguf package and runs float32):

    .venv/bin/python benchmarks/quality_gguf.py [--formats Q4_0,Q4_K_M,Q5_K_M,Q6_K,Q8_0]

The files are compare_gguf.py's (llama.cpp's quantize of the bundled model's F32 GGUF, cached under
~/.cache/pyruntime; run compare_gguf.py first). For each: teacher-forced greedy top-1 agreement
over 256 tokens of text, the largest logit difference relative to the largest logit, and the
greedy answer to "The capital of France is", for pyruntime's default (bfloat16 KV cache) and with
a float32 KV cache; the logits of the prompt as one prefill (with the prompts' default 16-bit
activations of the integer products, with 8-bit ones and with float32 ones: engine.prompt_bits,
where the CPU has the integer GEMM) and token by token through decode steps, with the default
8-bit activations of the integer products and with int8_activations=False (the effect of
quantizing the activations). Writes quality_gguf.json under --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import pyruntime
from pyruntime import models
from pyruntime._ext import C

# The text of tests/runtime/test_gguf_native.py's agreement test.
TEXT = (Path(__file__).resolve().parent.parent / "tests" / "data" / "river.txt").read_text().strip()


def decode_logits(llm, ids: list[int]) -> torch.Tensor:
    """Teacher-forced logits of ids one decode step at a time (the first token a prefill)."""
    eng = llm.engine
    eng.ensure_rows(1)
    out = [eng.prefill(torch.tensor(ids[:1]), 0, 0)]
    out += [eng.decode(torch.tensor([t]), torch.tensor([i]))[0] for i, t in enumerate(ids[1:], 1)]
    return torch.stack(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--formats", default="Q4_0,Q4_K_M,Q5_K_M,Q6_K,Q8_0")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import transformers

    out = Path(a.out or f"benchmarks/results/{C.best_cpu_isa()}")
    out.mkdir(parents=True, exist_ok=True)
    files = {"bundled Q4_1": models.bundled_gguf("smollm2-135m-instruct")}
    files.update({f: models.cache_root() / f"smollm2-135m-{f}.gguf" for f in a.formats.split(",")})
    rows = []
    for name, path in files.items():
        if not path.exists():
            raise SystemExit(f"{path} is missing: run benchmarks/compare_gguf.py first")
        ref = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                dtype=torch.float32).eval()
        # (KV cache, logits of, activation bits: the prompts' prompt_bits, or 8 / 32 for decode
        # steps' int8_activations True / False)
        for kv, path_kind, bits in (("bfloat16", "prefill", 16), ("bfloat16", "prefill", 8),
                                    ("bfloat16", "prefill", 32), ("float32", "prefill", 16),
                                    ("bfloat16", "decode", 8), ("bfloat16", "decode", 32),
                                    ("float32", "decode", 8), ("float32", "decode", 32)):
            int8 = path_kind == "prefill" or bits == 8
            llm = pyruntime.LLM(path, kv_dtype=kv, progress=False, int8_activations=int8)
            if path_kind == "prefill":
                llm.engine.prompt_bits = bits
                bits = llm.engine.prompt_bits  # 32 where the CPU has no integer GEMM
            ids = llm.tokenizer.encode(TEXT)[:256]
            with torch.no_grad():
                want = ref(torch.tensor([ids])).logits[0]
            got = llm.logits(ids) if path_kind == "prefill" else decode_logits(llm, ids)
            q = llm.tokenizer.encode("The capital of France is")
            with torch.no_grad():
                ref_answer = ref.generate(torch.tensor([q]), max_new_tokens=8, do_sample=False)[0, len(q):].tolist()
            answer = llm.generate(q, max_new_tokens=8, ignore_eos=True).token_ids
            row = {"file": name, "kv_dtype": kv, "logits_of": path_kind, "activation_bits": bits,
                   "weight_formats": llm.weight_formats, "tokens": len(ids),
                   "top1_agreement": (got.argmax(-1) == want.argmax(-1)).float().mean().item(),
                   "max_abs_diff_rel": ((got - want).abs().max() / want.abs().max()).item(),
                   "answer": llm.tokenizer.decode(answer), "transformers_answer": llm.tokenizer.decode(ref_answer)}
            rows.append(row)
            print(f"{name:<14} kv {kv:<9} {path_kind:<7} {bits:>2}-bit act  top-1 {100 * row['top1_agreement']:5.1f}%  max |diff| "
                  f"{row['max_abs_diff_rel']:.1e} of max  answer {row['answer']!r} (transformers "
                  f"{row['transformers_answer']!r})  {row['weight_formats']}", flush=True)
            del llm
    (out / "quality_gguf.json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {out / 'quality_gguf.json'}")


if __name__ == "__main__":
    main()
