"""Drain past the grace period: tests/server/test_limits.py shows a stream that finishes inside the grace
period running to its end after SIGTERM; here the stream is longer than the grace period (2 s), so it gets
an error chunk and `[DONE]` when the period ends, new requests meanwhile get 503, and the process still
exits 0 about a second later."""

from __future__ import annotations

import signal
import time

import httpx

from ..server.sse import parse
from ..server.test_limits import Background, wait_for

LONG = {"model": "tiny", "prompt": "To be, or not to be", "max_tokens": 480, "steps": 480,
        "commit_events": True}


def test_a_stream_longer_than_the_grace_period_ends_with_an_error_chunk_and_exit_0(start_server):
    server = start_server("--max-batch", "1", "--drain-timeout", "2")
    stream = Background(server.url, LONG)
    assert stream.first.wait(60)
    sent = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: httpx.get(server.url + "/health").status_code == 503, timeout=5)
    refused = httpx.post(server.url + "/v1/completions", json=LONG, timeout=30)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
    stream.join(60)
    ended = time.monotonic() - sent
    events, done = parse(stream.raw)
    assert done and events[-1]["error"]["code"] == "shutdown", stream.raw[-300:]
    assert "choices" not in events[-1] and len(events) > 2  # it streamed until the grace period ended
    assert 1.5 < ended < 15
    assert server.proc.wait(timeout=30) == 0
