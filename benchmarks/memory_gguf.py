"""Peak resident memory of loading a GGUF file and generating a few tokens, against the file's
size and the KV cache:

    .venv/bin/python benchmarks/memory_gguf.py FILE.gguf [--max-seq-len 4096]

Reads VmRSS before loading and VmHWM (the peak) after loading and after generating 8 tokens from
/proc/self/status (Linux)."""

import argparse
from pathlib import Path

import pyruntime


def status(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise SystemExit(f"/proc/self/status has no {key}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf")
    ap.add_argument("--max-seq-len", type=int, default=4096)
    a = ap.parse_args()
    path = Path(a.gguf)
    base = status("VmRSS")
    llm = pyruntime.LLM(path, max_seq_len=a.max_seq_len, progress=False)
    loaded = status("VmHWM")
    llm.generate("Hello", max_new_tokens=8, ignore_eos=True)
    peak = status("VmHWM")
    size = path.stat().st_size
    print(f"file {size / 1e9:.3f} GB  KV cache {llm.kv_cache_bytes / 1e9:.3f} GB  RSS before load {base / 1e9:.3f} GB  "
          f"peak after load {loaded / 1e9:.3f} GB  after generate {peak / 1e9:.3f} GB  "
          f"(peak - before) / (file + KV cache) = {(peak - base) / (size + llm.kv_cache_bytes):.2f}")


if __name__ == "__main__":
    main()
