"""Stream chunks, one function per kind: role, delta (with the optional `inkwell` step event), finish,
usage, error. `ChatChunks` builds `chat.completion.chunk`s, `TextChunks` builds `text_completion`
chunks; both return the JSON text of one `data:` line. The usage chunk is the only one without choices.
"""

from __future__ import annotations

import json

from inkwell.engine import StepEvent

from .errors import ApiError, error_body
from .protocol import (
    ChatChunkChoice,
    ChatCompletionChunk,
    CommitInfo,
    CompletionChunk,
    Delta,
    InkwellStep,
    TextChoice,
    Usage,
)

DONE = "[DONE]"


def inkwell_step(event: StepEvent) -> InkwellStep:
    commits = [CommitInfo(index=c.index, token_id=c.token_id, text=c.text, confidence=c.confidence,
                          margin=c.margin) for c in event.commits]
    return InkwellStep(step=event.step, block=event.block, commits=commits,
                       masked_remaining=event.masked_remaining)


def error_chunk(err: ApiError) -> str:
    """`{"error": {...}}`, sent when a failure happens after streaming began (then `[DONE]`)."""
    return json.dumps(error_body(err))


class ChatChunks:
    def __init__(self, completion_id: str, created: int, model: str) -> None:
        self.id, self.created, self.model = completion_id, created, model

    def _chunk(self, choices: list, **extra) -> str:
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices,
                                   **extra).model_dump_json()

    def role(self, index: int) -> str:
        return self._chunk([ChatChunkChoice(index=index, delta=Delta(role="assistant", content=""))])

    def delta(self, index: int, text: str, event: StepEvent | None = None) -> str:
        step = inkwell_step(event) if event is not None else None
        delta = Delta(content=text) if text else Delta()
        return self._chunk([ChatChunkChoice(index=index, delta=delta)], inkwell=step)

    def finish(self, index: int, finish_reason: str) -> str:
        return self._chunk([ChatChunkChoice(index=index, delta=Delta(), finish_reason=finish_reason)])

    def usage(self, usage: Usage) -> str:
        return self._chunk([], usage=usage)


class TextChunks(ChatChunks):
    def _chunk(self, choices: list, **extra) -> str:
        return CompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices,
                               **extra).model_dump_json()

    def role(self, index: int) -> str | None:
        return None  # text completions have no role

    def delta(self, index: int, text: str, event: StepEvent | None = None) -> str:
        step = inkwell_step(event) if event is not None else None
        return self._chunk([TextChoice(index=index, text=text)], inkwell=step)

    def finish(self, index: int, finish_reason: str) -> str:
        return self._chunk([TextChoice(index=index, text="", finish_reason=finish_reason)])
