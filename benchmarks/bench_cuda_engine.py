"""The CUDA engine at Llama-3-8B's shape (random bfloat16 weights) against transformers eager on
the same shape, in one process on one GPU:

    python benchmarks/bench_cuda_engine.py

Prints decode step time, tokens/s and MBU (weights + KV cache read per step, of the embedding
only the token's row, over the bandwidth of a 1 GB device copy measured in the same run) at
several contexts, with and without CUDA graphs; prefill of 512 tokens; and transformers' decode
and prefill on the same shape. Needs a GPU with ~40 GB free and a CUDA build of pyruntime.
"""
import gc
import statistics
import time

import torch

from pyruntime._ext import C
from pyruntime.bench import weight_bytes_read

# Llama-3-8B: layers, hidden, intermediate, query heads, KV heads, head size, vocabulary; cache length
L, H, I, HQ, HKV, D, V, MAX_SEQ = 32, 4096, 14336, 32, 8, 128, 128256, 4096
DEV, BF16 = "cuda", torch.bfloat16


def median_ms(fn, reps=5):
    fn()
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def copy_bandwidth():
    """Bytes per second of a 1 GB device-to-device copy, read and write counted."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device=DEV).fill_(1)
    dst = torch.empty_like(src)
    return 2 * src.numel() / (median_ms(lambda: dst.copy_(src), 10) / 1e3)


def random_spec(gen):
    """A C.ModelSpec of Llama-3-8B's shape with random bfloat16 weights on the GPU."""
    def rnd(*shape):
        return (torch.randn(*shape, generator=gen, device=DEV) * 0.02).to(BF16)

    def mat(*shape):
        return C.WeightMatrix(C.WeightFormat.bfloat16, rnd(*shape))

    def ones():
        return torch.ones(H, dtype=BF16, device=DEV)

    inv = 1.0 / (500000.0 ** (torch.arange(0, D, 2, device=DEV, dtype=torch.float32) / D))
    ang = torch.arange(MAX_SEQ, device=DEV, dtype=torch.float32)[:, None] * inv[None]
    def rows(*sizes):  # adjacent row blocks of one tensor: the CUDA engine's stacked q, k, v (gate, up)
        whole = rnd(sum(sizes), H)
        return [C.WeightMatrix(C.WeightFormat.bfloat16, w) for w in whole.split(list(sizes))]

    layers = []
    for _ in range(L):
        q, k, v = rows(HQ * D, HKV * D, HKV * D)
        gate, up = rows(I, I)
        layers.append(C.LayerSpec(attn_norm=ones(), q=q, k=k, v=v, o=mat(H, HQ * D), mlp_norm=ones(), gate=gate,
                                  up=up, down=mat(H, I)))
    spec = C.ModelSpec(architecture="LlamaForCausalLM", hidden=H, inter=I, num_heads=HQ, num_kv_heads=HKV,
                       head_dim=D, vocab=V, norm_eps=1e-5, attn_scale=D**-0.5,
                       rope_cos_sin=torch.cat([ang.cos(), ang.sin()], 1).contiguous(), rotary_dim=D, rope_neox=True,
                       embed=mat(V, H), layers=layers, final_norm=ones(), lm_head=mat(V, H))
    return spec, rnd


def bench_engine(bw):
    gen = torch.Generator(device=DEV).manual_seed(0)
    spec, rnd = random_spec(gen)
    weight_bytes = weight_bytes_read(spec)  # the embedding's one row per token, not its table
    engine = C.CudaEngine(spec, MAX_SEQ, 512)
    k, v = rnd(L, 1, HKV, MAX_SEQ, D).view(-1), rnd(L, 1, HKV, MAX_SEQ, D).view(-1)  # flat, as the engine takes
    logits = torch.empty(1, V, device=DEV)
    stream = torch.cuda.current_stream().cuda_stream
    print(f"weights read per token {weight_bytes / 1e9:.2f} GB")
    for graphs in (True, False):
        engine.set_cuda_graphs(graphs)
        for ctx in (128, 1024, 4000):
            def steps(n=20, ctx=ctx):
                for _ in range(n):
                    engine.forward(torch.tensor([7]), torch.tensor([ctx]), torch.tensor([0]), k, v, logits, 0, stream)
            ms = median_ms(steps) / 20
            kv_bytes = 2 * L * HKV * (ctx + 1) * D * 2
            print(f"pyruntime CUDA engine graphs={graphs} context {ctx}: step {ms:.2f} ms, {1e3 / ms:.1f} tokens/s, "
                  f"MBU {(weight_bytes + kv_bytes) / (ms / 1e3) / bw:.0%}")
    prompt, rows = torch.randint(0, V, (512,)), torch.zeros(512, dtype=torch.long)
    ms = median_ms(lambda: engine.forward(prompt, torch.arange(512), rows, k, v, logits, 511, stream), 3)
    print(f"pyruntime CUDA engine prefill 512 tokens: {ms:.1f} ms, {512 / ms * 1e3:.0f} tokens/s")


def bench_transformers():
    import transformers

    config = transformers.LlamaConfig(hidden_size=H, intermediate_size=I, num_hidden_layers=L,
                                      num_attention_heads=HQ, num_key_value_heads=HKV, vocab_size=V,
                                      max_position_embeddings=MAX_SEQ, rope_theta=500000.0)
    torch.set_default_dtype(BF16)
    with torch.device(DEV):
        model = transformers.LlamaForCausalLM(config).eval()
    torch.set_default_dtype(torch.float32)
    ids = torch.randint(0, V, (1, 128), device=DEV)
    with torch.no_grad():
        ms = median_ms(lambda: model.generate(ids, max_new_tokens=64, min_new_tokens=64, do_sample=False), 3)
        prefill = median_ms(lambda: model(torch.randint(0, V, (1, 512), device=DEV)), 3)
    print(f"transformers eager bf16: 64 tokens after 128 in {ms:.0f} ms -> {64e3 / ms:.1f} tokens/s "
          f"(prefill included); prefill 512: {prefill:.1f} ms")


def main():
    if not torch.cuda.is_available() or not hasattr(C, "CudaEngine"):
        raise SystemExit("bench_cuda_engine: needs a CUDA GPU and pyruntime built with CUDA")
    bw = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bw / 1e9:.0f} GB/s")
    bench_engine(bw)
    gc.collect()
    torch.cuda.empty_cache()
    bench_transformers()


if __name__ == "__main__":
    main()
