"""Back-pressure, cancellation, deadlines and the SIGTERM drain, on a server with one batch slot
(`--max-batch 1`), one queue slot (`--max-queue 1`) and a 5 s request timeout. A long request is a
480-token canvas with 480 steps (seconds on this CPU); a short one is 16 tokens.

The drain test stops this module's server, so it comes last.
"""

from __future__ import annotations

import re
import signal
import threading
import time

import httpx
import openai
import pytest

from .conftest import ServerProcess
from .sse import parse

# commit_events: a chunk every step, so "the stream has begun" is observable at once
LONG = {"model": "tiny", "prompt": "To be, or not to be", "max_tokens": 480, "steps": 480,
        "commit_events": True}
SHORT = {"model": "tiny", "prompt": "All the world", "max_tokens": 16}


@pytest.fixture(scope="module")
def limited(start_server):
    """The server, plus what /health and a completion answered right after its port opened."""
    server = start_server("--max-batch", "1", "--max-queue", "1", "--request-timeout", "5",
                          "--drain-timeout", "30", wait=False)
    server.wait_port()
    server.early = (httpx.get(server.url + "/health"), httpx.post(server.url + "/v1/completions", json=SHORT))
    server.wait_healthy()
    return server


def test_port_opens_at_once_and_answers_503_until_models_are_loaded(limited):
    health, completion = limited.early
    assert health.status_code == 503 and health.json()["error"]["code"] == "loading"
    assert completion.status_code == 503 and completion.headers["retry-after"]
    assert httpx.get(limited.url + "/health").status_code == 200


def test_a_model_that_cannot_load_exits_1_with_the_reason(tmp_path):
    server = ServerProcess(["--model", f"broken={tmp_path / 'missing'}"], tmp_path / "log")
    assert server.proc.wait(timeout=60) == 1
    assert "missing" in server.log.read_text()


def gauge(server, name: str, model: str = "tiny") -> float:
    text = httpx.get(server.url + "/metrics").text
    match = re.search(rf'^inkwell:{name}{{model_name="{model}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def wait_for(predicate, timeout: float = 10.0, every: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(every)
    return False


class Background:
    """A streaming request read on a thread; `first` is set once its first chunk arrived."""

    def __init__(self, url: str, body: dict, path: str = "/v1/completions") -> None:
        self.first = threading.Event()
        self.raw = ""
        self.status: int | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(url, path, body), daemon=True)
        self.thread.start()

    def _run(self, url: str, path: str, body: dict) -> None:
        with httpx.stream("POST", url + path, json=body | {"stream": True}, timeout=60) as r:
            self.status = r.status_code
            for piece in r.iter_text():
                self.raw += piece
                self.first.set()
                if self.stop.is_set():
                    return  # leaving the block closes the connection: the client disconnects
        self.first.set()

    def join(self, timeout: float = 60) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive()


def test_queue_full_is_429_with_retry_after(limited):
    running = Background(limited.url, LONG)
    assert running.first.wait(30)
    queued = Background(limited.url, SHORT)  # waits for the one batch slot
    assert wait_for(lambda: gauge(limited, "num_requests_waiting") == 1)
    r = httpx.post(limited.url + "/v1/completions", json=SHORT, timeout=30)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["type"] == "rate_limit_error" and r.headers["x-request-id"]
    client = openai.OpenAI(base_url=limited.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.completions.create(**SHORT)
    running.stop.set()
    queued.stop.set()
    running.join()
    queued.join()


def test_cancelled_stream_frees_its_batch_slot(limited):
    assert wait_for(lambda: gauge(limited, "num_requests_running") == 0)
    stream = Background(limited.url, LONG)
    assert stream.first.wait(30)
    assert wait_for(lambda: gauge(limited, "num_requests_running") == 1, timeout=5)
    stream.stop.set()  # the client goes away after its first chunk
    stream.join()
    assert wait_for(lambda: gauge(limited, "num_requests_running") == 0, timeout=2)
    assert "[DONE]" not in stream.raw
    start = time.monotonic()
    r = httpx.post(limited.url + "/v1/completions", json=SHORT, timeout=30)
    assert r.status_code == 200 and time.monotonic() - start < 3  # the slot is free, not held by the LONG row


def test_non_streaming_client_that_leaves_is_cancelled(limited):
    assert wait_for(lambda: gauge(limited, "num_requests_running") == 0)
    body = LONG | {"commit_events": False}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(limited.url + "/v1/completions", json=body, timeout=httpx.Timeout(30, read=1.0))
    assert wait_for(lambda: gauge(limited, "num_requests_running") == 0, timeout=2)


def test_deadline_is_504_or_an_error_chunk_once_streaming(limited):
    """Two requests that need longer than the 5 s timeout: the streaming one (running) ends with an error
    chunk, the non-streaming one (queued behind it, then running) is a 504."""
    assert wait_for(lambda: gauge(limited, "num_requests_running") == 0)
    stream = Background(limited.url, LONG)
    assert stream.first.wait(30)
    start = time.monotonic()
    r = httpx.post(limited.url + "/v1/completions", json=LONG | {"commit_events": False}, timeout=30)
    assert r.status_code == 504, r.text
    assert 4 < time.monotonic() - start < 12
    assert r.json()["error"]["type"] == "timeout_error"
    stream.join()
    events, done = parse(stream.raw)
    assert stream.status == 200 and done
    assert events[-1]["error"]["type"] == "timeout_error" and "choices" not in events[-1]


def test_sigterm_drains_running_stream_refuses_new_and_exits_0(limited):
    assert wait_for(lambda: gauge(limited, "num_requests_running") == 0)
    body = SHORT | {"max_tokens": 160, "steps": 160, "commit_events": True}
    stream = Background(limited.url, body)
    assert stream.first.wait(30)
    limited.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: httpx.get(limited.url + "/health").status_code == 503, timeout=5)
    refused = httpx.post(limited.url + "/v1/completions", json=SHORT, timeout=30)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
    stream.join()
    events, done = parse(stream.raw)
    assert done and events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert limited.proc.wait(timeout=20) == 0
