"""The compiled engines. CPU: int8 weights against a dequantised transformers reference, prompts
longer than one engine chunk, the profiler's events, and bad calls. CUDA (where a GPU is):
agreement with float32, CUDA-graph replay against direct launches, bad calls."""

import shutil

import pytest
import torch

import pyruntime
from pyruntime import engine as engine_mod
from pyruntime import formats
from pyruntime._ext import C

transformers = pytest.importorskip("transformers")


def reference_quantize(w, group):
    """Plain torch: per group of `group` input features, scale = absmax / 127, q = round(w / scale)."""
    rows, cols = w.shape
    out_q = torch.empty(rows, cols, dtype=torch.int8)
    out_s = torch.empty(rows, cols // group)
    for g in range(cols // group):
        block = w[:, g * group:(g + 1) * group].double()
        s = block.abs().max(dim=1).values / 127
        out_s[:, g] = s.float()
        safe = torch.where(s > 0, s, torch.ones_like(s))
        out_q[:, g * group:(g + 1) * group] = torch.round(block / safe[:, None]).clamp(-127, 127).to(torch.int8)
    return out_q, out_s


@pytest.mark.parametrize("shape,group", [((8, 64), 64), ((33, 576), 64), ((5, 96), 32)])
def test_quantize_int8_matches_reference(shape, group):
    torch.manual_seed(0)
    w = torch.randn(shape) * torch.rand(shape[0], 1) * 3
    w[0] = 0.0  # an all-zero group gets scale 0, not NaN
    q, s = formats.quantize_int8(w, group)
    want_q, want_s = reference_quantize(w, group)
    torch.testing.assert_close(s, want_s, rtol=1e-6, atol=0)
    assert (q.int() - want_q.int()).abs().max().item() <= 1  # round-half cases of float vs double
    err = (formats.dequantize_int8(q, s) - w).abs()
    assert (err <= s.repeat_interleave(group, dim=1) * 0.5 + 1e-6).all()


# A vocabulary that is a multiple of 4 puts the tied embedding in the engine's int8 row blocks
# too (pack_int8_rows); 49150 leaves it in plain rows.
@pytest.fixture(scope="module", params=[49152, 49150], ids=["vocab-blocked", "vocab-plain"])
def tiny_llama(tmp_path_factory, llm, request):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=request.param, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                   rms_norm_eps=1e-5, tie_word_embeddings=True)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    folder = tmp_path_factory.mktemp("tiny-int8")
    model.save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(llm.path / f, folder / f)
    return model, folder


def test_int8_logits_match_dequantized_reference(tiny_llama):
    model, folder = tiny_llama
    # The reference: transformers with every projection (and the tied embedding) replaced by
    # its int8 round trip, quantised by the plain torch code above.
    ref = transformers.AutoModelForCausalLM.from_config(model.config).eval()
    state = {}
    for name, p in model.state_dict().items():
        if p.dim() == 2:
            q, s = reference_quantize(p, 64)
            p = (q.float().reshape(p.shape[0], -1, 64) * s[:, :, None]).reshape(p.shape)
        state[name] = p
    ref.load_state_dict(state)
    ids = [5, 900, 17, 4000, 33, 12, 7, 49000, 1, 2, 3, 250] * 4
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0]
    llm = pyruntime.LLM(folder, dtype="int8", progress=False)
    got = llm.logits(ids)
    # The KV cache of the int8 engine is bfloat16 (8 bits of mantissa): that is the error left.
    err = (got - want).abs().max().item()
    assert err < 0.02 * want.abs().max().item(), err
    assert (got.argmax(-1) == want.argmax(-1)).float().mean().item() >= 0.95
    assert llm.weight_bytes < 0.3 * sum(p.numel() * 4 for p in model.parameters())


@pytest.mark.parametrize("n", [12, 40, engine_mod.MAX_TOKENS + 10])
def test_key_layouts_match_reference(tiny_llama, n):
    # The engine keeps K in 16-key tiles when max_seq_len is a multiple of 16 and in rows
    # otherwise (500). Calls of <= 16 tokens take the decode attention, longer ones the causal
    # prefill: n covers both, over partial key blocks and tiles.
    model, folder = tiny_llama
    torch.manual_seed(2)
    ids = torch.randint(100, 40000, (n,)).tolist()
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0]
    got = {}
    for dtype in ("float32", "bfloat16"):
        for max_seq_len in (512, 500):
            llm = pyruntime.LLM(folder, dtype=dtype, max_seq_len=max_seq_len, progress=False)
            got[dtype, max_seq_len] = llm.logits(ids)
    scale = want.abs().max().item()
    for max_seq_len in (512, 500):
        assert (got["float32", max_seq_len] - want).abs().max().item() < 1e-4 * scale
    # bfloat16: the two layouts differ only in the order of the score sums.
    assert (got["bfloat16", 512] - got["bfloat16", 500]).abs().max().item() < 2e-3 * scale
    assert (got["bfloat16", 512] - want).abs().max().item() < 0.05 * scale


def test_long_prompt_runs_in_chunks(llm, hf_model):
    # Longer than one engine call: the chunks after the first attend to the keys the first wrote.
    n = engine_mod.MAX_TOKENS * 2 + 37
    torch.manual_seed(1)
    ids = torch.randint(100, 40000, (n,)).tolist()
    with torch.no_grad():
        want = hf_model(torch.tensor([ids])).logits[0]
    got = llm.logits(ids)
    assert (got - want).abs().max().item() < 2e-3
    # The last-token path (generate's prefill) agrees with the all-logits one.
    first = llm.generate(ids, max_new_tokens=1, ignore_eos=True)
    assert first.token_ids[0] == int(want[-1].argmax())


def test_int8_batch_rows_equal_alone(llm_int8):
    prompts = ["The capital of France is", "def add(a, b):", "Once upon a time"]
    alone = [llm_int8.generate(p, max_new_tokens=12, ignore_eos=True).token_ids for p in prompts]
    batch = [c.token_ids for c in llm_int8.generate(prompts, max_new_tokens=12, ignore_eos=True)]
    assert batch == alone


def test_profile_events(llm):
    eng = llm.engine
    eng.set_profiling(True)
    try:
        llm.generate("Hello", max_new_tokens=3, ignore_eos=True)  # a prefill call, two decode calls
        events = eng.profile()
    finally:
        eng.set_profiling(False)
    n_layers = llm.config.num_layers
    per_layer = ["attn_norm", "qkv_proj", "rope_kv_cache", "attention", "o_proj", "mlp_norm", "gate_up_silu",
                 "down_proj"]
    one_call = ["embed"] + per_layer * n_layers + ["final_norm", "lm_head"]
    assert [e[0] for e in events] == [c for c in range(3) for _ in one_call]
    assert [e[2] for e in events] == one_call * 3
    assert [e[1] for e in events[1:len(one_call) - 2]] == [l for l in range(n_layers) for _ in per_layer]
    for (c0, _, _, b0, e0), (c1, _, _, b1, _) in zip(events, events[1:]):
        assert b0 <= e0 <= b1  # in order
        if c0 == c1:
            assert e0 == b1  # within a call back to back, each starting where the previous ended
    eng.set_profiling(True)  # switching on again starts afresh
    assert eng.profile() == []
    eng.set_profiling(False)


def _call(llm, **over):
    # A cache of its own with one row (llm's own grows when other tests generate batches).
    eng, cache = llm.engine.handle, llm.engine._new_cache(1)
    args = dict(tokens=torch.tensor([1, 2]), positions=torch.tensor([0, 1]), rows=torch.tensor([0, 0]),
                k_cache=cache.k, v_cache=cache.v, logits=torch.empty(1, llm.config.vocab_size), first_logit=1)
    args.update(over)
    eng.forward(**args)


@pytest.mark.parametrize("over,match", [
    (dict(tokens=torch.tensor([1, 49152])), "tokens\\[1\\]"),
    (dict(tokens=torch.tensor([1, -1])), "tokens\\[1\\]"),
    (dict(positions=torch.tensor([0, 10**6])), "positions\\[1\\]"),
    (dict(rows=torch.tensor([0, 1])), "rows\\[1\\]"),
    (dict(positions=torch.tensor([3, 3])), "same cache row and position"),
    (dict(tokens=torch.tensor([1, 2], dtype=torch.int32)), "tokens"),
    (dict(positions=torch.tensor([0])), "one entry per token"),
    (dict(k_cache=torch.zeros(1)), "k_cache"),
    (dict(logits=torch.empty(2, 5)), "logits"),
    (dict(first_logit=3), "first_logit"),
    (dict(logit_tokens=torch.tensor([0, 1])), "logit_tokens must be a contiguous int64"),
    (dict(logit_tokens=torch.tensor([1], dtype=torch.int32)), "logit_tokens must be a contiguous int64"),
    (dict(logit_tokens=torch.tensor([2])), "logit_tokens must be ascending"),
    (dict(first_logit=0, logits=torch.empty(2, 49152), logit_tokens=torch.tensor([1, 1])), "logit_tokens\\[1\\] = 1"),
    (dict(tokens=torch.zeros(engine_mod.MAX_TOKENS + 1, dtype=torch.long),
          positions=torch.arange(engine_mod.MAX_TOKENS + 1), rows=torch.zeros(engine_mod.MAX_TOKENS + 1, dtype=torch.long)),
     "tokens must hold"),
])
def test_engine_rejects_bad_calls(llm, over, match):
    with pytest.raises(ValueError, match=match):
        _call(llm, **over)


def _f32(*shape):
    return C.WeightMatrix(C.WeightFormat.float32, torch.zeros(*shape))


def _int8(*shape, blocks=True):
    q, s = formats.quantize_int8(torch.randn(*shape), 16)
    if blocks and shape[0] % 4 == 0:
        q, s = formats.pack_int8_rows(q, s)
    return C.WeightMatrix(C.WeightFormat.int8, q, s)


def _spec(matrix=_f32, layer=None, H=8, **over):
    """A one-layer C.ModelSpec: hidden H, I 16, vocab 10, 2 query heads / 1 KV head of 64 features,
    RoPE for 4 positions; matrix(rows, cols) makes each weight; layer and over replace fields."""
    I, V = 16, 10
    fields = dict(attn_norm=torch.ones(H), q=matrix(128, H), k=matrix(64, H), v=matrix(64, H), o=matrix(H, 128),
                  mlp_norm=torch.ones(H), gate=matrix(I, H), up=matrix(I, H), down=matrix(H, I))
    fields.update(layer or {})
    spec = dict(architecture="LlamaForCausalLM", hidden=H, inter=I, num_heads=2, num_kv_heads=1, head_dim=64,
                vocab=V, norm_eps=1e-6, attn_scale=0.125, rope_cos_sin=torch.zeros(4, 64), rotary_dim=64,
                rope_neox=True, embed=matrix(V, H), layers=[C.LayerSpec(**fields)], final_norm=torch.ones(H),
                lm_head=matrix(V, H))
    spec.update(over)
    return C.ModelSpec(**spec)


def _engine(spec, max_seq=4, kv_dtype=torch.float32):
    return C.Engine(spec, max_seq, kv_dtype, 1, 4)


@pytest.mark.parametrize("make,match", [
    (lambda: _spec(layer=dict(o=_f32(8, 64))), "layers\\[0\\].o must be \\[8, 128\\]"),
    (lambda: _spec(num_kv_heads=3), "num_kv_heads"),
    (lambda: _spec(layer=dict(attn_norm=torch.ones(8, dtype=torch.bfloat16))), "layers\\[0\\].attn_norm must be"),
    (lambda: _spec(final_norm=torch.ones(9)), "final_norm must be"),
    (lambda: _spec(layer=dict(qkv_bias=torch.zeros(255))), "qkv_bias must be"),
    (lambda: _spec(layer=dict(sliding_window=-1)), "layers\\[0\\].sliding_window must be >= 0"),
    (lambda: _spec(layer=dict(q_norm=torch.ones(64))), "q_norm and k_norm come together"),
    (lambda: _spec(layer=dict(q_norm=torch.ones(32), k_norm=torch.ones(32))), "layers\\[0\\].q_norm must be"),
    (lambda: _spec(rope_cos_sin=torch.zeros(4, 32)), "rope_cos_sin"),
    (lambda: _spec(layer=dict(down=C.WeightMatrix(C.WeightFormat.float32, torch.zeros(8, 16, device="meta")))),
     "layers\\[0\\].down is on meta"),
    (lambda: _spec(layers=[]), "no layers"),
    (lambda: _spec(embed_scale=float("nan")), "embed_scale must be positive"),
    (lambda: _spec(attn_softcap=-1.0), "attn_softcap must be >= 0"),
    (lambda: _spec(final_softcap=float("inf")), "final_softcap must be >= 0"),
])
def test_engine_rejects_bad_specs(make, match):
    _engine(_spec())  # the good one builds
    with pytest.raises(ValueError, match=match):
        _engine(make())


def test_layer_spec_takes_its_fields_by_name():
    """C.LayerSpec is built from model_fields.h's list: every field by name, required ones
    required, optional ones None by default, anything else refused; the loaders' LayerWeights
    hold exactly its matrices and vectors (build_spec copies them by these names)."""
    import dataclasses

    from pyruntime.weights import LayerWeights

    kinds = C.LayerSpec.fields
    assert {n for n, k in kinds.items() if k == "matrix"} == {"q", "k", "v", "o", "gate", "up", "down"}
    assert {n for n, k in kinds.items() if k in ("matrix", "vector", "optional_vector")} == \
        {f.name for f in dataclasses.fields(LayerWeights)}
    layer = _spec().layers[0]
    given = {n: getattr(layer, n) for n, k in kinds.items() if k in ("matrix", "vector")}
    assert all(getattr(layer, n) is None for n, k in kinds.items() if k in ("optional_vector", "table"))
    assert layer.sliding_window == 0
    C.LayerSpec(**given)
    for name in given:
        with pytest.raises(TypeError, match=f"LayerSpec: {name} is required"):
            C.LayerSpec(**{n: t for n, t in given.items() if n != name})
    with pytest.raises(TypeError, match="unknown attribute.*qkv"):
        C.LayerSpec(**given, qkv=layer.q)
    with pytest.raises(TypeError, match="LayerSpec: o_bias got a str"):
        C.LayerSpec(**given, o_bias="bias")
    with pytest.raises(TypeError, match="LayerSpec: q got a Tensor"):
        C.LayerSpec(**{**given, "q": torch.zeros(128, 8)})
    assert C.LayerSpec(**given, sliding_window=7, o_bias=None).sliding_window == 7
    with pytest.raises(TypeError, match="LayerSpec: sliding_window got a NoneType"):
        C.LayerSpec(**given, sliding_window=None)


def test_model_spec_features_are_config_fields():
    """C.ModelSpec's model-wide features (model_fields.h) are ModelConfig's fields of the same
    names (build_spec copies them by name), each off unless given; unknown attributes are refused."""
    import dataclasses

    from pyruntime.config import ModelConfig

    assert set(C.ModelSpec.features) == {"embed_scale", "activation", "attn_softcap", "final_softcap"}
    assert set(C.ModelSpec.features) <= {f.name for f in dataclasses.fields(ModelConfig)}
    spec = _spec()
    assert (spec.embed_scale, spec.activation, spec.attn_softcap, spec.final_softcap) == \
        (1.0, C.Activation.silu, 0.0, 0.0)
    assert _spec(attn_softcap=50.0, activation=C.Activation.gelu_tanh).attn_softcap == 50.0
    with pytest.raises(TypeError, match="ModelSpec: unknown attribute.*rope_theta"):
        _spec(rope_theta=1e4)
    with pytest.raises(TypeError, match="ModelSpec: vocab is required"):
        _spec(vocab=None)
    with pytest.raises(TypeError, match="ModelSpec: activation got a str"):
        _spec(activation="silu")
    with pytest.raises(TypeError, match="ModelSpec: attn_softcap got a NoneType"):
        _spec(attn_softcap=None)  # a feature left out is off; None is no value


def test_engine_rejects_bad_options():
    with pytest.raises(ValueError, match="max_seq must be in \\[1, 4\\]"):
        _engine(_spec(), max_seq=8)  # more positions than the RoPE table holds
    with pytest.raises(ValueError, match="kv_dtype"):
        _engine(_spec(), kv_dtype=torch.float16)
    with pytest.raises(ValueError, match="threads"):
        C.Engine(_spec(), 4, torch.float32, -1, 4)


def test_weight_matrix_checks_its_format():
    C.WeightMatrix(C.WeightFormat.bfloat16, torch.zeros(4, 8, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="bfloat16 data must be a contiguous BFloat16"):
        C.WeightMatrix(C.WeightFormat.bfloat16, torch.zeros(4, 8))
    with pytest.raises(ValueError, match="float32 data must be a contiguous Float"):
        C.WeightMatrix(C.WeightFormat.float32, torch.zeros(8, 4).t())
    with pytest.raises(ValueError, match="takes no scales"):
        C.WeightMatrix(C.WeightFormat.float32, torch.zeros(4, 8), torch.ones(4, 1))
    with pytest.raises(ValueError, match="int8 data needs its scales"):
        C.WeightMatrix(C.WeightFormat.int8, torch.zeros(4, 32, dtype=torch.int8))
    with pytest.raises(ValueError, match="must be \\[rows, cols\\]"):
        C.WeightMatrix(C.WeightFormat.float32, torch.zeros(8))
    m = _int8(12, 64)
    assert (m.shape, m.group, m.block_rows, m.nbytes) == ((12, 64), 16, 4, 12 * 64 + 12 * 4 * 4)
    assert "int8 [12, 64]" in repr(m)


def test_engine_int8_row_blocks_checked():
    """int8 matrices come as plain rows or in row blocks (pack_int8_rows); a block layout whose
    shapes do not agree is refused."""
    spec = _spec(matrix=_int8, H=32)
    assert spec.embed.block_rows == 1 and spec.layers[0].q.block_rows == 4  # vocab 10: plain rows
    _engine(spec)  # both layouts in one model
    with pytest.raises(ValueError, match="layers\\[0\\].k must be \\[64, 8\\]"):
        _engine(_spec(layer=dict(k=spec.layers[0].k)))  # hidden 32 in a model of hidden 8
    q, s = formats.pack_int8_rows(*formats.quantize_int8(torch.randn(256, 32), 16))
    with pytest.raises(ValueError, match="int8 rows in blocks must be"):
        C.WeightMatrix(C.WeightFormat.int8, q, s.reshape(64, 4, 2))
    with pytest.raises(ValueError, match="int8 rows in blocks must be"):
        C.WeightMatrix(C.WeightFormat.int8, q.reshape(128, 2, 2, 16), s)
    with pytest.raises(ValueError, match="rows \\(10\\) must be a multiple of 4"):
        formats.pack_int8_rows(*formats.quantize_int8(torch.randn(10, 32), 16))
    with pytest.raises(ValueError, match="scales must be a contiguous float32"):
        formats.pack_int8_rows(q.reshape(-1, 32)[:8], torch.ones(8, 3))


def test_mixed_formats_match_reference(tiny_llama):
    """Each matrix in its own format in one model: the engine against transformers with every
    matrix replaced by its stored values (bfloat16 rounding, or the plain-torch int8 round trip)."""
    from pyruntime.config import ModelConfig
    from pyruntime.spec import build_spec
    from pyruntime.weights import load_weights

    model, folder = tiny_llama
    cfg = ModelConfig.from_file(folder / "config.json")
    weights = load_weights(folder, cfg, torch.float32, progress=False)
    plan = {0: dict(q="int8", k="bfloat16", v="float32", o="bfloat16", gate="float32", up="int8", down="int8"),
            1: dict(q="bfloat16", k="int8", v="int8", o="int8", gate="int8", up="bfloat16", down="bfloat16")}
    spec = build_spec(cfg, weights, formats.FORMATS["float32"], 512)
    layers = []
    for i, l in enumerate(spec.layers):
        packed = {k: formats.FORMATS[f].pack(getattr(weights.layers[i], k)) for k, f in plan[i].items()}
        layers.append(C.LayerSpec(attn_norm=l.attn_norm, mlp_norm=l.mlp_norm, **packed))
    kw = {k: getattr(spec, k) for k in ("architecture", "hidden", "inter", "num_heads", "num_kv_heads", "head_dim",
                                        "vocab", "norm_eps", "attn_scale", "rope_cos_sin", "rotary_dim", "rope_neox",
                                        "embed", "final_norm", "lm_head")}
    eng = engine_mod.CpuEngine(C.ModelSpec(**kw, layers=layers), 512, torch.float32, 1)

    def stored(p, fmt):
        if fmt == "bfloat16":
            return p.bfloat16().float()
        if fmt == "int8":
            group = formats.int8_group_size(p.shape[1])
            q, s = reference_quantize(p, group)
            return (q.float().reshape(p.shape[0], -1, group) * s[:, :, None]).reshape(p.shape)
        return p

    ours = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate", "up_proj": "up",
            "down_proj": "down"}
    state = {}
    for name, p in model.state_dict().items():
        parts = name.split(".")
        if len(parts) > 4 and parts[1] == "layers" and parts[4] in ours:
            p = stored(p, plan[int(parts[2])][ours[parts[4]]])
        state[name] = p
    ref = transformers.AutoModelForCausalLM.from_config(model.config).eval()
    ref.load_state_dict(state)
    ids = [5, 900, 17, 4000, 33, 12, 7, 4100, 1, 2, 3, 250] * 3
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0]
    got = eng.prefill(torch.tensor(ids), 0, 0, all_logits=True)
    # int8 products quantise the activations too (VNNI): a small error beside float32's.
    assert (got - want).abs().max().item() < 5e-3 * want.abs().max().item()
    assert (got.argmax(-1) == want.argmax(-1)).float().mean().item() >= 0.95


@pytest.mark.parametrize("rows,cols,group", [(4, 32, 32), (12, 128, 64), (8, 96, 32)])
def test_pack_int8_rows_layout(rows, cols, group):
    """pack_int8_rows puts group g of row 4b + r at [b, g, r]: checked against a torch
    reshape and permute of the plain rows."""
    q, s = formats.quantize_int8(torch.randn(rows, cols), group)
    qb, sb = formats.pack_int8_rows(q, s)
    groups = cols // group
    assert qb.shape == (rows // 4, groups, 4, group) and sb.shape == (rows // 4, groups, 4)
    assert torch.equal(qb, q.reshape(rows // 4, 4, groups, group).permute(0, 2, 1, 3))
    assert torch.equal(sb, s.reshape(rows // 4, 4, groups).permute(0, 2, 1))

# The CUDA engine: these run where torch sees a GPU and pyruntime was built with CUDA (never
# on the CPU-only build machines, which only compile it).
CUDA_ENGINE = torch.cuda.is_available() and hasattr(pyruntime._ext.C, "CudaEngine")
needs_cuda_engine = pytest.mark.skipif(not CUDA_ENGINE, reason="needs a CUDA GPU and a CUDA build of pyruntime")


@pytest.fixture(scope="module")
def llm_cuda():
    return pyruntime.LLM("smollm2-135m-instruct", dtype="bfloat16", device="cuda", progress=False)


@needs_cuda_engine
def test_cuda_engine_agrees_with_float32(llm, llm_cuda):
    # Teacher-forced top-1 agreement with the float32 CPU engine (checked against transformers
    # in test_smollm2): a prompt longer than a graph call (prefill) and a short one (graph).
    assert isinstance(llm_cuda.engine, engine_mod.CudaEngine)
    text = ("The history of the Roman Empire spans many centuries. It began when Augustus became the first "
            "emperor in 27 BC and, in the West, ended in 476 AD. Python is a programming language.")
    ids = llm.tokenizer.encode(text)
    ref, got = llm.logits(ids).argmax(-1), llm_cuda.logits(ids).argmax(-1).cpu()
    assert (ref == got).float().mean().item() >= 0.95
    short = ids[:9]
    assert (llm.logits(short).argmax(-1) == llm_cuda.logits(short).argmax(-1).cpu()).float().mean().item() >= 0.85


@needs_cuda_engine
def test_cuda_engine_graph_replay_matches_direct_launches(llm_cuda):
    eng = llm_cuda.engine.handle
    prompts = ["The capital of France is", "def add(a, b):"]
    with_graphs = [c.token_ids for c in llm_cuda.generate(prompts, max_new_tokens=12, ignore_eos=True)]
    assert eng.graphs > 0
    eng.set_cuda_graphs(False)
    try:
        direct = [c.token_ids for c in llm_cuda.generate(prompts, max_new_tokens=12, ignore_eos=True)]
    finally:
        eng.set_cuda_graphs(True)
    assert with_graphs == direct
    alone = [llm_cuda.generate(p, max_new_tokens=12, ignore_eos=True).token_ids for p in prompts]
    assert alone == with_graphs


@needs_cuda_engine
def test_cuda_engine_bad_calls(llm_cuda):
    eng, cache = llm_cuda.engine.handle, llm_cuda.engine.cache
    logits = torch.empty(1, llm_cuda.config.vocab_size, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    with pytest.raises(ValueError, match="tokens\\[0\\]"):
        eng.forward(torch.tensor([49152]), torch.tensor([0]), torch.tensor([0]), cache.k, cache.v, logits, 0, stream)
    with pytest.raises(ValueError, match="logits"):
        eng.forward(torch.tensor([1]), torch.tensor([0]), torch.tensor([0]), cache.k, cache.v, logits.cpu(), 0,
                    stream)


def _greedy_logits(eng, tokens, device, vocab, cache_shape, steps=3):
    """Logits of a prompt (one call) and of `steps` greedy decode steps after it, on a fresh
    cache of one row on `device`; the calls go on that device's current stream."""
    k = torch.zeros(cache_shape, dtype=torch.bfloat16, device=device).view(-1)  # the engines take flat caches
    v = torch.zeros_like(k)
    stream = torch.cuda.current_stream(device).cuda_stream
    n, out = tokens.shape[0], []
    logits = torch.empty(1, vocab, device=device)
    eng.forward(tokens, torch.arange(n), torch.zeros(n, dtype=torch.long), k, v, logits, n - 1, stream)
    out.append(logits.cpu())
    for i in range(steps):
        logits = torch.empty(1, vocab, device=device)  # a new tensor every call, as CudaEngine does
        eng.forward(out[-1].argmax(-1), torch.tensor([n + i]), torch.tensor([0]), k, v, logits, 0, stream)
        out.append(logits.cpu())
    return torch.cat(out)


def _spec_to(spec, device):
    """spec with every tensor copied to `device`."""
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    mat = lambda m: C.WeightMatrix(m.format, to(m.data), to(m.scales))  # noqa: E731
    def stacked(*ms):  # one tensor on the device, described as its row blocks (as build_spec(fuse=True))
        whole = to(torch.cat([m.data for m in ms]))
        bounds = torch.tensor([0] + [m.shape[0] for m in ms]).cumsum(0).tolist()
        return [C.WeightMatrix(ms[0].format, whole[a:b]) for a, b in zip(bounds, bounds[1:])]

    layers = []
    for l in spec.layers:
        q, k, v = stacked(l.q, l.k, l.v)
        gate, up = stacked(l.gate, l.up)
        layers.append(C.LayerSpec(attn_norm=to(l.attn_norm), q=q, k=k, v=v, qkv_bias=to(l.qkv_bias), o=mat(l.o),
                                  o_bias=to(l.o_bias), mlp_norm=to(l.mlp_norm), gate=gate, up=up, down=mat(l.down),
                                  sliding_window=l.sliding_window, q_norm=to(l.q_norm), k_norm=to(l.k_norm)))
    embed = mat(spec.embed)
    tied = spec.lm_head.data.data_ptr() == spec.embed.data.data_ptr()
    return C.ModelSpec(architecture=spec.architecture, hidden=spec.hidden, inter=spec.inter, num_heads=spec.num_heads,
                       num_kv_heads=spec.num_kv_heads, head_dim=spec.head_dim, vocab=spec.vocab,
                       norm_eps=spec.norm_eps, attn_scale=spec.attn_scale, rope_cos_sin=to(spec.rope_cos_sin),
                       rotary_dim=spec.rotary_dim, rope_neox=spec.rope_neox, embed=embed, layers=layers,
                       final_norm=to(spec.final_norm), lm_head=embed if tied else mat(spec.lm_head))


@needs_cuda_engine
def test_cuda_engine_on_the_last_device_with_another_current(llm_cuda):
    # The model on the last GPU while the first is current (with one GPU, both are cuda:0):
    # construction and every call run on the weights' device and give the caller's back.
    dev = torch.device("cuda", torch.cuda.device_count() - 1)
    ref = llm_cuda.engine
    cfg = llm_cuda.config
    shape = (cfg.num_layers, 1, cfg.num_kv_heads, llm_cuda.max_seq_len, cfg.head_dim)
    tokens = torch.tensor(llm_cuda.tokenizer.encode("The capital of France is"))
    want = _greedy_logits(ref.handle, tokens, ref.device, cfg.vocab_size, shape)
    with torch.cuda.device(0):
        eng = pyruntime._ext.C.CudaEngine(_spec_to(ref.spec, dev), llm_cuda.max_seq_len, engine_mod.MAX_TOKENS)
        assert torch.cuda.current_device() == 0
        got = _greedy_logits(eng, tokens, dev, cfg.vocab_size, shape)
        assert torch.cuda.current_device() == 0
        assert eng.graphs > 0
        del eng
        assert torch.cuda.current_device() == 0
    assert torch.isfinite(got).all()
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    if torch.cuda.get_device_name(dev) == torch.cuda.get_device_name(ref.device):
        assert torch.equal(got, want)  # the same kernels on the same kind of GPU


@needs_cuda_engine
def test_cuda_engine_graphs_bounded_and_logits_follow_the_tensor(llm_cuda):
    # More (n, first_logit) shapes than the engine keeps graphs for, each call with a new
    # logits tensor: the cache stays at its bound, and a replay writes the tensor it was given.
    eng, cfg = llm_cuda.engine.handle, llm_cuda.config
    cache = llm_cuda.engine._new_cache(1)  # not the LLM's own cache: its cached prefix stays valid
    k, v = cache.k, cache.v
    stream = torch.cuda.current_stream().cuda_stream
    for n in range(1, 17):
        for first in sorted({0, n - 1, n}):
            logits = torch.empty(n - first, cfg.vocab_size, device="cuda")
            eng.forward(torch.arange(1, n + 1), torch.arange(n), torch.zeros(n, dtype=torch.long), k, v, logits,
                        first, stream)
            assert eng.graphs <= 32
    assert eng.graphs == 32
    args = (torch.tensor([5]), torch.tensor([20]), torch.tensor([0]), k, v)
    a, b, c = (torch.full((1, cfg.vocab_size), float("nan"), device="cuda") for _ in range(3))
    eng.forward(*args, a, 0, stream)
    eng.forward(*args, b, 0, stream)  # the same graph replayed into another tensor
    eng.set_cuda_graphs(False)
    try:
        eng.forward(*args, c, 0, stream)
    finally:
        eng.set_cuda_graphs(True)
    assert torch.isfinite(a).all() and torch.equal(a, b) and torch.equal(a, c)


@needs_cuda_engine
def test_cuda_engine_rejects_zero_tokens(llm_cuda):
    eng, cache = llm_cuda.engine.handle, llm_cuda.engine.cache
    empty = torch.zeros(0, dtype=torch.long)
    logits = torch.empty(0, llm_cuda.config.vocab_size, device="cuda")
    with pytest.raises(ValueError, match="tokens must hold 1 to"):
        eng.forward(empty, empty, empty, cache.k, cache.v, logits, 0, torch.cuda.current_stream().cuda_stream)
