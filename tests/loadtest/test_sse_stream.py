"""Unit tests of loadtest/sse_stream.py: what counts as a good stream, and how each bad one is named."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest


def load_sse_stream():
    """loadtest/ is a folder of scripts, not a package: load the module from its file."""
    path = Path(__file__).resolve().parents[2] / "loadtest" / "sse_stream.py"
    spec = importlib.util.spec_from_file_location("loadtest_sse_stream", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


sse = load_sse_stream()


def data(payload: dict | str) -> list[bytes]:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return [f"data: {text}".encode(), b""]


def chunk(content: str | None = None, usage: dict | None = None) -> dict:
    choices = [] if usage else [{"index": 0, "delta": {} if content is None else {"content": content}}]
    return {"object": "chat.completion.chunk", "choices": choices, "usage": usage}


def clock(*times: float):
    readings = iter(times)
    return lambda: next(readings)


USAGE = {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}


def test_timing_of_a_good_stream():
    lines = (data(chunk("")) + [b": ping"] + data(chunk("To be")) + data(chunk()) + data(chunk(", or"))
             + data(chunk(" not")) + data(chunk(usage=USAGE)) + data("[DONE]"))
    # the clock is read once per content chunk and once at [DONE]
    timing = sse.read_stream(lines, start=10.0, clock=clock(10.5, 10.75, 11.0, 12.0))
    assert timing.ttft == pytest.approx(0.5)
    assert timing.itl == pytest.approx([0.25, 0.25])
    assert timing.e2e == pytest.approx(2.0)
    assert timing.completion_tokens == 5


def test_an_empty_answer_has_no_ttft():
    lines = data(chunk("")) + data(chunk(usage=USAGE | {"completion_tokens": 0})) + data("[DONE]")
    timing = sse.read_stream(lines, start=0.0, clock=clock(1.0))
    assert timing.ttft is None and timing.itl == [] and timing.completion_tokens == 0


@pytest.mark.parametrize("lines, message", [
    (data(chunk("a")) + data({"error": {"message": "deadline passed", "code": "timeout"}}) + data("[DONE]"),
     "error chunk: timeout: deadline passed"),
    (data(chunk("a")) + data(chunk(usage=USAGE)), "without data: [DONE]"),
    (data(chunk("a")) + data("[DONE]"), "no usage chunk"),
    (data(chunk(usage=USAGE)) + data("[DONE]") + data(chunk("late")), "data after [DONE]"),
    (data("{not json"), "malformed chunk"),
    ([], "without data: [DONE]"),
])
def test_bad_streams_fail_with_a_reason(lines, message):
    with pytest.raises(sse.StreamError, match=re.escape(message)):
        sse.read_stream(lines, start=0.0, clock=clock(*range(1, 10)))
