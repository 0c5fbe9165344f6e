"""Timing one streamed chat completion from its server-sent event lines, without Locust.

`read_stream` takes the body's lines as they arrive (bytes, without line endings) and returns a
`StreamTiming`: time to first token (the first non-empty `delta.content`, as DESIGN section 8 defines TTFT),
the gaps between successive content chunks (inter-token latency; a diffusion model may commit several
tokens per chunk), end-to-end time up to `data: [DONE]`, and the answer's token count from the usage chunk.
A stream that carries an error chunk, a malformed payload, data after `[DONE]`, no usage chunk or no
`[DONE]` raises `StreamError`; the Locust user counts it as a failed request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

DONE = b"[DONE]"


class StreamError(Exception):
    """The stream ended badly; the message says how."""


@dataclass
class StreamTiming:
    e2e: float  # seconds from the request to `data: [DONE]`
    ttft: float | None  # seconds to the first non-empty content; None if the answer was empty
    itl: list[float] = field(default_factory=list)  # seconds between successive content chunks
    completion_tokens: int = 0  # from the usage chunk


def read_stream(lines: Iterable[bytes], start: float,
                clock: Callable[[], float] = time.perf_counter) -> StreamTiming:
    """Read `data:` lines until `[DONE]`; `start` is the `clock()` reading taken when the request was sent."""
    lines = iter(lines)  # one pass: what follows [DONE] is read from where the loop stopped
    content_times: list[float] = []
    usage: dict | None = None
    for line in lines:
        if not line.startswith(b"data:"):
            continue  # blank separators, comments (sse-starlette's pings), other SSE fields
        payload = line[len(b"data:"):].strip()
        if payload == DONE:
            end = clock()
            return _timing(start, end, content_times, usage, _rest(lines))
        chunk = _parse(payload)
        if chunk.get("usage"):
            usage = chunk["usage"]
        if any(_content(choice) for choice in chunk.get("choices", [])):
            content_times.append(clock())
    raise StreamError("stream ended without data: [DONE]")


def _parse(payload: bytes) -> dict:
    try:
        chunk = json.loads(payload)
    except ValueError as err:
        raise StreamError(f"malformed chunk {payload[:200]!r}: {err}") from None
    if not isinstance(chunk, dict):
        raise StreamError(f"chunk is not a JSON object: {payload[:200]!r}")
    if "error" in chunk:
        error = chunk["error"] if isinstance(chunk["error"], dict) else {"message": chunk["error"]}
        raise StreamError(f"error chunk: {error.get('code') or error.get('type')}: {error.get('message')}")
    return chunk


def _content(choice: dict) -> str:
    return (choice.get("delta") or {}).get("content") or choice.get("text") or ""


def _rest(lines: Iterable[bytes]) -> list[bytes]:
    """What follows `[DONE]`: nothing but blank lines is allowed."""
    return [line for line in lines if line.strip()]


def _timing(start: float, end: float, content_times: list[float], usage: dict | None,
            after_done: list[bytes]) -> StreamTiming:
    if after_done:
        raise StreamError(f"data after [DONE]: {after_done[0][:200]!r}")
    if usage is None:
        raise StreamError("no usage chunk (the request asks for stream_options.include_usage)")
    gaps = [b - a for a, b in zip(content_times, content_times[1:], strict=False)]
    ttft = content_times[0] - start if content_times else None
    return StreamTiming(e2e=end - start, ttft=ttft, itl=gaps,
                        completion_tokens=int(usage["completion_tokens"]))
