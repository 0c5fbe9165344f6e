"""One choice's answer as the server sees it: the canvas replayed from commit events, the newly final text,
where it ends, and why.

The engine's events say which token ids were committed where. `ChoiceText` replays them and releases
text only from the contiguous final prefix of the answer, which ends at the first still-masked position,
the first stop id, or `max_tokens` (the canvas may be longer: it is rounded up to whole blocks). Text is
decoded incrementally with the engine's detokenizer, so no character is split, and text that could be the
start of a `stop` string is held back until it cannot be; the output is cut before the first stop string.
`completion_tokens` counts the answer tokens before the first stop id (or up to the cut).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from inkwell.engine.detok import IncrementalDetokenizer

MASKED = -1


class ChoiceText:
    def __init__(self, canvas: int, max_tokens: int, stop_ids: Iterable[int], stop_strings: list[str],
                 decode: Callable[[list[int]], str]) -> None:
        self.answer = [MASKED] * canvas  # token id per answer position, MASKED until committed
        self.max_tokens = min(max_tokens, canvas)
        self.stop_ids = frozenset(stop_ids)
        self.stop_strings = stop_strings
        self.detok = IncrementalDetokenizer(decode)
        self.final_upto = 0  # answer positions whose text has gone through the detokenizer
        self.held = ""  # decoded text held back while it may begin a stop string
        self.text = ""  # everything released so far
        self.finish_reason: str | None = None  # "stop" or "length" once the answer is complete

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def completion_tokens(self) -> int:
        return self.final_upto

    def commit(self, commits: Iterable[tuple[int, int]]) -> str:
        """Apply (index, token_id) commits; return the newly final text (possibly empty)."""
        if self.done:
            return ""
        for index, token_id in commits:
            self.answer[index] = token_id
        start, end, hit_stop_id = self.final_upto, self._final_end(), False
        if end < self.max_tokens and end < len(self.answer) and self.answer[end] in self.stop_ids:
            hit_stop_id = True
        self.final_upto = end
        text = self.detok.push(self.answer[start:end]) if end > start else ""
        if hit_stop_id or end == self.max_tokens:
            text += self.detok.flush()
            return self._release(text, "stop" if hit_stop_id else "length")
        return self._release(text, None)

    def finish(self) -> str:
        """The engine finished this row: release what is left; `length` unless a stop came first."""
        if self.done:
            return ""
        return self._release(self.detok.flush(), "length")

    def _final_end(self) -> int:
        """End of the contiguous final prefix: first masked position, first stop id, or max_tokens."""
        end = self.final_upto
        while end < self.max_tokens and self.answer[end] != MASKED and self.answer[end] not in self.stop_ids:
            end += 1
        return end

    def _release(self, text: str, finish_reason: str | None) -> str:
        pending = self.held + text
        cut = min((i for i in (pending.find(s) for s in self.stop_strings) if i >= 0), default=-1)
        if cut >= 0:
            pending, finish_reason = pending[:cut], "stop"
        if finish_reason is None and self.stop_strings:
            keep = self._partial_stop_length(pending)
            pending, self.held = pending[: len(pending) - keep], pending[len(pending) - keep :]
        else:
            self.held = ""
        self.finish_reason = finish_reason
        self.text += pending
        return pending

    def _partial_stop_length(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stop_strings:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
