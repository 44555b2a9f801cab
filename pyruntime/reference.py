"""TorchReference: the model's forward sequenced in Python over pyruntime.ops, one op call at a
time. It is the fallback where no compiled engine exists (float32 on CUDA) and a readable
specification of what the engines compute; it has the engines' interface (engine.Engine)."""

from __future__ import annotations

import torch

from pyruntime import ops
from pyruntime._ext import C
from pyruntime.engine import Engine
from pyruntime.formats import dequantize, format_of, quantize_activations


class TorchReference(Engine):
    """From the same model description as the compiled engines: float32 and bfloat16 matrices
    used in their dtype (the ops then run in it), quantized ones dequantized once to float32;
    q, k, v and gate, up joined (a copy: this is the oracle, not the fast path). With
    int8_activations (the CPU engine's default), the input of a decode call's product with a
    matrix whose format has integer products is first quantized as
    pyruntime.formats.quantize_activations defines; a prompt's to prompt_bits (8, 16 or 32:
    float32), as CpuEngine.prompt_bits says the engine does."""

    max_tokens = 1 << 30  # no chunking: each prefill is one pass

    def __init__(self, spec: C.ModelSpec, max_seq_len: int, kv_dtype: torch.dtype, int8_activations: bool = True,
                 prompt_bits: int = 32):
        super().__init__(spec, max_seq_len, kv_dtype, spec.embed.data.device)
        floats: dict[int, torch.Tensor] = {}

        def matrix(m):  # a tied LM head stays the embedding itself
            key = m.data.data_ptr()
            if key not in floats:
                floats[key] = m.data if m.data.is_floating_point() else dequantize(m)
            return floats[key]

        def parts(*ms):
            """[(weights, activation group or None)]: the matrices stacked by rows, one part per
            run of the same activation group."""
            runs: list[tuple[list, int | None]] = []
            for m in ms:
                group = format_of(m).activation_group
                if runs and runs[-1][1] == group:
                    runs[-1][0].append(matrix(m))
                else:
                    runs.append(([matrix(m)], group))
            return [(w[0] if len(w) == 1 else torch.cat(w), g) for w, g in runs]

        self.embed, self.lm_head, self.final_norm = matrix(spec.embed), parts(spec.lm_head), spec.final_norm
        self.layers = [
            dict(attn_norm=l.attn_norm, mlp_norm=l.mlp_norm, qkv=parts(l.q, l.k, l.v), qkv_bias=l.qkv_bias,
                 o=parts(l.o), o_bias=l.o_bias, gate_up=parts(l.gate, l.up), down=parts(l.down),
                 q_norm=l.q_norm, k_norm=l.k_norm, window=l.sliding_window, post_attn_norm=l.post_attn_norm,
                 post_mlp_norm=l.post_mlp_norm,
                 cos_sin=spec.rope_cos_sin if l.rope_cos_sin is None else l.rope_cos_sin)
            for l in spec.layers
        ]
        if prompt_bits not in (8, 16, 32):
            raise ValueError(f"prompt_bits must be 8, 16 or 32, got {prompt_bits!r}")
        self.decode_bits, self.prompt_bits = (8 if int8_activations else None), prompt_bits
        self.scale = spec.attn_scale
        self.q_size, self.kv_size = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim

    def _attention_inputs(self, layer, x, bits):
        """x [T, H] -> q [T, Hq, D], k, v [T, Hkv, D] views of one fused projection."""
        s, q_size, kv_size = self.spec, self.q_size, self.kv_size
        qkv = _linear(x, layer["qkv"], bits)
        if layer["qkv_bias"] is not None:
            qkv += layer["qkv_bias"]
        t = x.shape[0]
        q = qkv[:, :q_size].view(t, s.num_heads, s.head_dim)
        k = qkv[:, q_size : q_size + kv_size].view(t, s.num_kv_heads, s.head_dim)
        v = qkv[:, q_size + kv_size :].view(t, s.num_kv_heads, s.head_dim)
        if layer["q_norm"] is not None:  # qk-norm: every head normed before RoPE
            q = ops.rms_norm(q.reshape(-1, s.head_dim), layer["q_norm"], s.norm_eps).view(q.shape)
            k = ops.rms_norm(k.reshape(-1, s.head_dim), layer["k_norm"], s.norm_eps).view(k.shape)
            v = v.contiguous()  # the cache op takes k and v alike
        return q, k, v

    def _prompt_bits(self, tokens: int, gemm_over: int) -> int | None:
        """The activations of a prompt's products over `tokens` tokens (_linear's bits): 16-bit
        ones where the engine takes its GEMM (over gemm_over tokens), float32 below."""
        if self.prompt_bits == 16:
            return 16 if tokens > gemm_over else None
        return 8 if self.prompt_bits == 8 else None

    def _run_layers(self, tokens: torch.Tensor, attend, bits: int | None) -> torch.Tensor:
        """The residual stream through every layer; attend(i, q, k, v) -> [T, Hq*D]; bits: the
        activations of the products (_linear). Returns the final-normed hidden states [T, H]."""
        s, layers = self.spec, self.layers
        eps = s.norm_eps
        residual = self.embed[tokens.to(self.device)]  # [T, H]
        if s.embed_scale != 1.0:
            residual = residual * s.embed_scale
        x = ops.rms_norm(residual, layers[0]["attn_norm"], eps)
        for i, layer in enumerate(layers):
            q, k, v = self._attention_inputs(layer, x, bits)
            x = _linear(attend(i, q, k, v), layer["o"], bits)
            if layer["o_bias"] is not None:
                x += layer["o_bias"]
            if layer["post_attn_norm"] is not None:
                x = ops.rms_norm(x, layer["post_attn_norm"], eps)
            ops.fused_add_rms_norm(x, residual, layer["mlp_norm"], eps)
            x = _gated_mlp(x, layer["gate_up"], layer["down"], s.activation, bits)
            if layer["post_mlp_norm"] is not None:
                x = ops.rms_norm(x, layer["post_mlp_norm"], eps)
            next_norm = layers[i + 1]["attn_norm"] if i + 1 < len(layers) else self.final_norm
            ops.fused_add_rms_norm(x, residual, next_norm, eps)
        return x

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, row: int, start_pos: int, all_logits: bool = False) -> torch.Tensor:
        t, cache = tokens.shape[0], self.cache
        positions = torch.arange(start_pos, start_pos + t, device=self.device).view(1, t)

        def attend(i, q, k, v):
            k_all, v_all = cache.layer(i)
            kc, vc = k_all[row : row + 1], v_all[row : row + 1]
            layer = self.layers[i]
            ops.rotary_embedding_and_cache(positions, q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), kc, vc,
                                           layer["cos_sin"])
            if layer["window"] or self.spec.attn_softcap:
                return self._torch_attention(q, kc[0], vc[0], positions[0], layer["window"])
            return ops.prefill_attention(q.contiguous(), kc[0], vc[0], start_pos, self.scale).reshape(t, -1)

        x = self._run_layers(tokens, attend, self._prompt_bits(t, C.prompt_gemm_tokens))
        x = x if all_logits else x[-1:]
        logits = self._logits(x, self._prompt_bits(x.shape[0], C.max_row_tile_tokens))
        return logits if all_logits else logits[0]

    def _logits(self, x: torch.Tensor, bits: int | None) -> torch.Tensor:
        logits = _linear(x, self.lm_head, bits).float()
        cap = self.spec.final_softcap
        return cap * torch.tanh(logits / cap) if cap else logits

    def _torch_attention(self, q, k, v, positions, window):
        """Attention in plain torch (float32) where the compiled ops have no such attention (a
        sliding window, soft-capped scores): q [T, Hq, D] at positions [T] against one
        sequence's cache k, v [Hkv, S, D]; the token at pos attends keys [pos + 1 - window, pos]
        (window 0: [0, pos]). Returns [T, Hq * D] in q's dtype."""
        keys = torch.arange(k.shape[1], device=k.device)
        pos = positions.to(k.device).view(-1, 1)
        mask = (keys <= pos) & ((keys > pos - window) if window else True)
        group = q.shape[1] // k.shape[0]
        kf = k.float().repeat_interleave(group, 0)
        vf = v.float().repeat_interleave(group, 0)
        scores = q.transpose(0, 1).float() @ kf.transpose(1, 2) * self.scale  # [Hq, T, S]
        cap = self.spec.attn_softcap
        if cap:
            scores = cap * torch.tanh(scores / cap)
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        return (probs @ vf).transpose(0, 1).reshape(q.shape[0], -1).to(q.dtype)

    def _forward(self, tokens, positions, rows, first_logit, prompt):
        """One decode group: token i at positions[i] of cache row rows[i] (rows consecutive);
        prompt: the prompts' activations (prefill overrides the chunking)."""
        n, cache = tokens.shape[0], self.cache
        r0, r1 = int(rows[0]), int(rows[-1]) + 1
        if not torch.equal(rows.cpu(), torch.arange(r0, r1)):
            raise ValueError(f"TorchReference decodes consecutive cache rows only, got {rows.tolist()}")
        pos = positions.to(self.device).view(n, 1)
        seq_lens = (positions + 1).to(device=self.device, dtype=torch.int32)

        def attend(i, q, k, v):
            k_all, v_all = cache.layer(i)
            kc, vc = k_all[r0:r1], v_all[r0:r1]
            layer = self.layers[i]
            ops.rotary_embedding_and_cache(pos, q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), kc, vc,
                                           layer["cos_sin"])
            if layer["window"] or self.spec.attn_softcap:
                return torch.cat([self._torch_attention(q[b : b + 1], kc[b], vc[b], pos[b], layer["window"])
                                  for b in range(n)])
            return ops.gqa_decode_attention(q.contiguous(), kc, vc, seq_lens, self.scale).view(n, self.q_size)

        if prompt:
            x = self._run_layers(tokens, attend, self._prompt_bits(n, C.prompt_gemm_tokens))
            return self._logits(x[first_logit:], self._prompt_bits(n - first_logit, C.max_row_tile_tokens))
        x = self._run_layers(tokens, attend, self.decode_bits)
        return self._logits(x[first_logit:], self.decode_bits)


def _linear(x: torch.Tensor, parts, bits: int | None) -> torch.Tensor:
    """x times the stacked matrices of parts (TorchReference's), each part's input first quantized
    where it has an activation group and bits says so: 8 bits in the part's groups, 16 in groups of
    32 (pyruntime.formats.quantize_activations), None: float."""

    def quantized(g):
        if g is None or bits is None:
            return x
        return quantize_activations(x, g if bits == 8 else 32, bits).to(x.dtype)

    ys = [ops.linear(quantized(g), w) for w, g in parts]
    return ys[0] if len(ys) == 1 else torch.cat(ys, -1)


def _gated_mlp(x: torch.Tensor, gate_up, down, activation, bits: int | None) -> torch.Tensor:
    """down(act(gate x) * up x): the fused op (SiLU) where no input is quantized."""
    silu = activation == C.Activation.silu
    plain = bits is None or (gate_up[0][1] is None and down[0][1] is None)
    if silu and len(gate_up) == 1 and len(down) == 1 and plain:
        return ops.gated_mlp(x, gate_up[0][0], down[0][0])
    gate, up = _linear(x, gate_up, bits).chunk(2, dim=-1)
    act = torch.nn.functional.silu(gate) if silu else torch.nn.functional.gelu(gate, approximate="tanh")
    return _linear(act * up, down, bits)
