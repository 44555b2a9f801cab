"""A tiny Llama-2 style GGUF file (sentencepiece vocabulary trained here, random weights,
F32 and F16 tensors) written with the gguf package, for the convert and fuzz tests."""

import io

import numpy as np

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! This is a small corpus for a tiny sentencepiece model.",
    "Numbers like 12345 and 3.14 appear, as do names: Alice, Bob, Carol.",
    "Tokenizers split text into pieces; merges join frequent pairs.",
] * 20


def train_sentencepiece(add_dummy_prefix: bool = True, processor: bool = False):
    """(pieces, scores, types) of a tiny BPE sentencepiece model; with processor, the
    SentencePieceProcessor too. add_dummy_prefix False: no space before the text and no
    normalization of spaces (as Gemma's vocabulary)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=400, model_type="bpe", byte_fallback=True,
        character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2,
        **({} if add_dummy_prefix else dict(add_dummy_prefix=False, remove_extra_whitespaces=False,
                                             normalization_rule_name="identity")),
    )
    proc = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [proc.id_to_piece(i) for i in range(proc.get_piece_size())]
    scores = [proc.get_score(i) for i in range(proc.get_piece_size())]
    types = [1] * len(pieces)
    for i in range(len(pieces)):
        if proc.is_unknown(i):
            types[i] = 2
        elif proc.is_control(i):
            types[i] = 3
        elif proc.is_byte(i):
            types[i] = 6
    return (pieces, scores, types, proc) if processor else (pieces, scores, types)


def permute(w, n_head):
    # llama.cpp's interleaving of q/k rows (the inverse of what convert undoes).
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_llama_gguf(path, chat_template=None, add_space_prefix: bool = True):
    """chat_template: a string, or a list of {"name", "template"} (named variants).
    add_space_prefix False: a vocabulary without sentencepiece's dummy prefix, said so in the
    metadata (tokenizer.ggml.add_space_prefix), as Gemma's files are."""
    import gguf

    pieces, scores, types = train_sentencepiece(add_space_prefix)
    vocab, hidden, inter, heads, kv_heads, layers = len(pieces), 64, 96, 2, 1, 2
    head_dim = hidden // heads
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    if not add_space_prefix:
        w.add_add_space_prefix(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    rng = np.random.default_rng(0)

    def rnd(*shape, scale=0.1):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w.add_tensor("token_embd.weight", rnd(vocab, hidden))
    w.add_tensor("output_norm.weight", 1 + rnd(hidden))
    w.add_tensor("output.weight", rnd(vocab, hidden))
    for i in range(layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", 1 + rnd(hidden))
        w.add_tensor(p + "ffn_norm.weight", 1 + rnd(hidden))
        w.add_tensor(p + "attn_q.weight", permute(rnd(hidden, hidden), heads))
        w.add_tensor(p + "attn_k.weight", permute(rnd(kv_heads * head_dim, hidden), kv_heads))
        w.add_tensor(p + "attn_v.weight", rnd(kv_heads * head_dim, hidden).astype(np.float16))
        w.add_tensor(p + "attn_output.weight", rnd(hidden, hidden))
        w.add_tensor(p + "ffn_gate.weight", rnd(inter, hidden))
        w.add_tensor(p + "ffn_up.weight", rnd(inter, hidden))
        w.add_tensor(p + "ffn_down.weight", rnd(hidden, inter))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


