"""Incremental detokenisation: text pieces as tokens arrive, never a character split
across tokens, stop strings cut (and held back while they may still be completing)."""

from __future__ import annotations


class TextStream:
    def __init__(self, tokenizer, stop: list[str]):
        self._tok = tokenizer
        self._stop = stop
        self._ids: list[int] = []
        self._prefix = 0  # ids[prefix:read] were decoded last time, as context
        self._read = 0
        self.text = ""  # all text so far (cut at a stop string once one is found)
        self._emitted = 0  # how much of text has been handed out
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Adds a token; returns the text that is now safe to hand out."""
        self._ids.append(token_id)
        before = self._tok.decode(self._ids[self._prefix : self._read])
        after = self._tok.decode(self._ids[self._prefix :])
        # A trailing U+FFFD is an incomplete UTF-8 character: wait for the next token.
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._append(after[len(before) :])
            self._prefix, self._read = self._read, len(self._ids)
        return self._take(final=False)

    def finish(self) -> str:
        """No more tokens: hands out whatever is left (even an incomplete character)."""
        if not self.stopped and self._read < len(self._ids):
            before = self._tok.decode(self._ids[self._prefix : self._read])
            after = self._tok.decode(self._ids[self._prefix :])
            self._append(after[len(before) :])
            self._read = len(self._ids)
        return self._take(final=True)

    def _append(self, piece: str):
        if self.stopped:
            return
        start = max(0, len(self.text) - max((len(s) for s in self._stop), default=0))
        self.text += piece
        cut = min((i for i in (self.text.find(s, start) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text = self.text[:cut]
            self.stopped = True

    def _take(self, final: bool) -> str:
        end = len(self.text)
        if not final and not self.stopped:
            end -= self._held_back()
        end = max(end, self._emitted)
        piece = self.text[self._emitted : end]
        self._emitted = end
        return piece

    def _held_back(self) -> int:
        """Length of the longest end of text that is the start of a stop string."""
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best
