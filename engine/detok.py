"""Incremental detokenization of a row's final text.

A diffusion canvas becomes final from the left: the answer's text is final up to the first position
that is still masked (or the first stop id). `IncrementalDetokenizer` turns each newly final run of
tokens into newly final text without ever splitting a UTF-8 character, decoding a short window instead
of the whole prefix (the method of vLLM's `detokenize_incrementally`): text that ends in U+FFFD, an
incomplete byte sequence, is held back until the next token completes it (or `flush` at the end).
"""

from __future__ import annotations

from collections.abc import Callable

Decode = Callable[[list[int]], str]

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, decode: Decode | None) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the decode window (context for spacing rules)
        self.read_offset = 0  # end of the text already emitted

    def push(self, ids: list[int]) -> str:
        """Append newly final token ids; return the newly final text (possibly empty)."""
        self.ids.extend(ids)
        if self.decode is None or not ids:
            return ""
        return self._emit(hold_incomplete=True)

    def flush(self) -> str:
        """The rest of the text at the end of generation, incomplete characters included."""
        if self.decode is None or self.read_offset == len(self.ids):
            return ""
        return self._emit(hold_incomplete=False)

    def _emit(self, hold_incomplete: bool) -> str:
        prefix = self.decode(self.ids[self.prefix_offset : self.read_offset])
        text = self.decode(self.ids[self.prefix_offset :])
        if hold_incomplete and (text.endswith(REPLACEMENT) or len(text) <= len(prefix)):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return text[len(prefix) :]
