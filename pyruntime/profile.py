"""`pyruntime profile`: where a step's time goes, measured inside the C++ engine.

The engine's timers (thread 0, after each phase's barrier, so a phase's time includes
waiting for its slowest thread) are compiled in and switched on only here. Writes a
Chrome / Perfetto trace (chrome://tracing, ui.perfetto.dev): a span per step, per layer and
per op; prints each op's share of the decode step."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from pyruntime.bench import CpuContention, contention_lines
from pyruntime.engine import CpuEngine


def _calls(llm, prompt_tokens: int, new_tokens: int):
    """One greedy generation with the engine's timers on: [(kind, events)] per engine call."""
    eng = llm.engine
    text_ids = llm.tokenizer.encode("The history of every river is a story of water, stone and time. ")
    ids = (text_ids * (prompt_tokens // len(text_ids) + 1))[:prompt_tokens]
    eng.set_profiling(True)
    try:
        done = llm.generate(ids, max_new_tokens=new_tokens + 1, ignore_eos=True)
        events = eng.profile()
    finally:
        eng.set_profiling(False)
    by_call = defaultdict(list)
    for call, layer, op, b, e in events:
        by_call[call].append((layer, op, b, e))
    # The prompt (less what the KV cache already held) went in chunks of max_tokens.
    prefill_calls = -(-(prompt_tokens - done.stats.cached_prompt_tokens) // eng.max_tokens)
    return [("prefill" if c < prefill_calls else "decode", by_call[c]) for c in sorted(by_call)], prefill_calls


def run_profile(llm, prompt_tokens: int = 128, new_tokens: int = 32, trace: str | None = None) -> dict:
    if not isinstance(llm.engine, CpuEngine):
        raise ValueError("profile needs the CPU engine (device='cpu')")
    if prompt_tokens < 1 or new_tokens < 1 or prompt_tokens + new_tokens + 1 > llm.max_seq_len:
        raise ValueError(f"need prompt_tokens >= 1, new_tokens >= 1 and their sum < max_seq_len {llm.max_seq_len}")
    with CpuContention() as contention:
        calls, prefill_calls = _calls(llm, prompt_tokens, new_tokens)
    per_op = defaultdict(list)  # op -> total ns in each decode step
    step_ns = []
    for kind, events in calls[prefill_calls:]:
        totals = defaultdict(int)
        for _, op, b, e in events:
            totals[op] += e - b
        for op, ns in totals.items():
            per_op[op].append(ns)
        step_ns.append(events[-1][3] - events[0][2])
    step = statistics.median(step_ns)
    rows = sorted(((op, statistics.median(v)) for op, v in per_op.items()), key=lambda r: -r[1])
    if trace:
        write_trace(calls, trace)
    prefill = [e for _, events in calls[:prefill_calls] for e in events]
    return {
        "dtype": llm.dtype, "threads": llm.engine.threads, "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens, "prefill_ms": sum(e - b for _, _, b, e in prefill) / 1e6,
        "decode_step_ms": step / 1e6,
        "ops": [{"op": op, "ms": ns / 1e6, "share": ns / step} for op, ns in rows],
        "other_cpu_cores": contention.other_cores, "steal_cpu_cores": contention.steal_cores,
    }


def write_trace(calls, path: str) -> None:
    """Chrome trace events: one span per engine call, per layer, and per op (microseconds)."""
    t0 = calls[0][1][0][2]
    us = lambda ns: (ns - t0) / 1e3  # noqa: E731
    out = []
    decode_index = 0
    for kind, events in calls:
        begin, end = events[0][2], events[-1][3]
        if kind == "decode":
            decode_index += 1
        out.append({"name": f"decode {decode_index}" if kind == "decode" else kind, "cat": kind, "ph": "X", "pid": 1,
                    "tid": 1, "ts": us(begin), "dur": (end - begin) / 1e3})
        layers = defaultdict(list)
        for layer, op, b, e in events:
            layers[layer].append((b, e))
            out.append({"name": op, "cat": "op", "ph": "X", "pid": 1, "tid": 1, "ts": us(b), "dur": (e - b) / 1e3,
                        "args": {"layer": layer}})
        for layer, spans in layers.items():
            if layer >= 0:
                b, e = spans[0][0], spans[-1][1]
                out.append({"name": f"layer {layer}", "cat": "layer", "ph": "X", "pid": 1, "tid": 1,
                            "ts": us(b), "dur": (e - b) / 1e3})
    Path(path).write_text(json.dumps({"traceEvents": out, "displayTimeUnit": "ms"}))


def format_profile(r: dict) -> str:
    lines = [
        f"pyruntime profile  dtype {r['dtype']}  threads {r['threads']}  prompt {r['prompt_tokens']} tokens, "
        f"{r['new_tokens']} decode steps",
        f"prefill {r['prefill_ms']:.1f} ms   decode step {r['decode_step_ms']:.2f} ms (median)",
        f"{'op':<16}{'ms/step':>10}{'share':>8}",
    ]
    lines += [f"{o['op']:<16}{o['ms']:>10.3f}{100 * o['share']:>7.1f}%" for o in r["ops"]]
    return "\n".join(lines + contention_lines(r))
