"""Output constrained to a JSON schema, through llguidance: before each token is sampled, the
tokens that cannot continue a document valid against the schema are masked out; once the
document is complete only the model's EOS tokens remain. llguidance rather than xgrammar:
both cost well under a decode step (benchmarks/bench_grammar.py, bundled vocabulary: 32-42 us
per token and 0.5-0.7 ms to compile a schema for llguidance; 13-21 us and 1.5-6 ms for
xgrammar), and llguidance needs neither transformers nor triton at run time."""

from __future__ import annotations

import json
import threading
import weakref

import torch

_LOCK = threading.Lock()
_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _lltokenizer(tokenizer, n_vocab: int, eos: tuple[int, ...]):
    """llguidance's view of a pyruntime Tokenizer (built once per tokenizer, ~0.3 s)."""
    import llguidance

    key = (n_vocab, eos)
    with _LOCK:
        cached = _TOKENIZERS.setdefault(tokenizer, {})
        if key not in cached:
            cached[key] = llguidance.LLTokenizer(tokenizer._tok.to_str(), n_vocab=n_vocab, eos_token=list(eos))
        return cached[key]


class JsonSchemaConstraint:
    """One sequence's constraint: apply(logits) masks what the schema rules out next; accept(token)
    advances it. schema: a JSON schema (dict or JSON text); True or {}: any JSON object."""

    def __init__(self, tokenizer, schema, n_vocab: int, eos: tuple[int, ...]):
        try:
            import llguidance
            import llguidance.numpy as ln  # (llguidance.torch imports torch.compile: ~2 s)
        except ImportError:
            raise ValueError("json_schema needs llguidance (pip install llguidance)") from None
        if schema is True or schema == {}:
            schema = {"type": "object"}
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as e:
                raise ValueError(f"json_schema is not valid JSON: {e}") from None
        if not isinstance(schema, dict):
            raise ValueError(f"json_schema must be a JSON schema (an object), got {type(schema).__name__}")
        if not eos:
            raise ValueError("json_schema needs the model's EOS token (ignore_eos is set)")
        lltok = _lltokenizer(tokenizer, n_vocab, tuple(sorted(eos)))
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        except (ValueError, TypeError, RuntimeError) as e:
            raise ValueError(f"json_schema: {e}") from None
        error = llguidance.LLMatcher.validate_grammar(grammar, lltok)
        if error and not error.startswith("WARNING"):
            raise ValueError(f"json_schema: {error}")
        self._fill = ln.fill_next_token_bitmask
        self.matcher = llguidance.LLMatcher(lltok, grammar)
        self._mask = ln.allocate_token_bitmask(1, n_vocab)
        self.mask = torch.from_numpy(self._mask)  # the same memory

    _BITS = torch.arange(32, dtype=torch.int32)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """A copy of float32 logits [V] with every token the schema rules out at -inf."""
        self._fill(self.matcher, self._mask)
        # (the mask covers n_vocab >= the logits' length: LLM.constraint's max of both vocabularies)
        allowed = ((self.mask.view(-1, 1) >> self._BITS) & 1).view(-1)[: logits.shape[-1]].bool()
        return logits.masked_fill(~allowed.to(logits.device, non_blocking=True), float("-inf"))

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(token) and not self.matcher.is_stopped():
            raise RuntimeError(f"json_schema: token {token} was not allowed ({self.matcher.get_error()})")
