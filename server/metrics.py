"""Prometheus metrics in vLLM's style, with an `inkwell:` prefix and a `model_name` label (DESIGN section 8).

One `Metrics` object per app owns its own `CollectorRegistry` (no process-global state), so several
servers in one process (tests) do not share counters. `RequestTimer` records one request's latencies:
queue time (submission to its first denoising step), time to first token (first non-empty content),
inter-token latency (between successive non-empty contents), end-to-end latency, tokens committed per
step and forward passes per request. The running gauge is read from the engine at scrape time, so a
cancelled row leaves it as soon as the engine has dropped it from its batch; the waiting gauge counts the
server's rows submitted to the engine that have not had their first step yet (the engine counts its queue
for all models together).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
TOKEN_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256)
PASS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, running: Callable[[], dict[str, int]]) -> None:
        """`running()` -> {model_name: rows in the engine's batch}, read at each scrape."""
        self.registry = CollectorRegistry()
        self.running_rows = running
        self.waiting_rows: dict[str, int] = {}
        labels = ["model_name"]
        hist = lambda name, doc, buckets: Histogram(f"inkwell:{name}", doc, labels, buckets=buckets,
                                                    registry=self.registry)
        self.ttft = hist("time_to_first_token_seconds", "Time to the first non-empty content.",
                         LATENCY_BUCKETS)
        self.itl = hist("inter_token_latency_seconds", "Time between successive non-empty contents.",
                        LATENCY_BUCKETS)
        self.e2e = hist("e2e_request_latency_seconds", "End-to-end request latency.", LATENCY_BUCKETS)
        self.queue = hist("request_queue_time_seconds", "Time from submission to the first denoising step.",
                          LATENCY_BUCKETS)
        self.committed = hist("tokens_committed_per_step", "Tokens committed by one denoising step of a row.",
                              TOKEN_BUCKETS)
        self.passes = hist("forward_passes_per_request", "Denoising steps (model forwards) per row.",
                           PASS_BUCKETS)
        self.running = Gauge("inkwell:num_requests_running", "Rows being denoised.", labels,
                             registry=self.registry)
        self.waiting = Gauge("inkwell:num_requests_waiting", "Rows queued for the engine.", labels,
                             registry=self.registry)
        self.requests = Counter("inkwell:request_success", "Finished requests by finish reason.",
                                [*labels, "finished_reason"], registry=self.registry)
        self.prompt_tokens = Counter("inkwell:prompt_tokens", "Prompt tokens processed.", labels,
                                     registry=self.registry)
        self.generation_tokens = Counter("inkwell:generation_tokens", "Answer tokens generated.", labels,
                                         registry=self.registry)

    def render(self) -> bytes:
        for name, running in self.running_rows().items():
            self.running.labels(name).set(running)
            self.waiting.labels(name).set(self.waiting_rows.get(name, 0))
        return generate_latest(self.registry)

    def timer(self, model_name: str) -> RequestTimer:
        return RequestTimer(self, model_name)


class RequestTimer:
    """One row's timings, from its submission: `step` per event, `content` per non-empty text, `end` when
    it finishes, `close` when it leaves (finished, failed or cancelled)."""

    def __init__(self, metrics: Metrics, model_name: str) -> None:
        self.metrics, self.model = metrics, model_name
        self.start = time.monotonic()
        self.last_content: float | None = None
        self.steps = 0
        self.queued = True
        metrics.waiting_rows[model_name] = metrics.waiting_rows.get(model_name, 0) + 1

    def _dequeue(self) -> None:
        if self.queued:
            self.queued = False
            self.metrics.waiting_rows[self.model] -= 1

    def close(self) -> None:
        self._dequeue()

    def step(self, committed: int) -> None:
        if self.steps == 0:
            self._dequeue()
            self.metrics.queue.labels(self.model).observe(time.monotonic() - self.start)
        self.steps += 1
        self.metrics.committed.labels(self.model).observe(committed)

    def content(self) -> None:
        now = time.monotonic()
        if self.last_content is None:
            self.metrics.ttft.labels(self.model).observe(now - self.start)
        else:
            self.metrics.itl.labels(self.model).observe(now - self.last_content)
        self.last_content = now

    def end(self, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> None:
        m = self.metrics
        m.e2e.labels(self.model).observe(time.monotonic() - self.start)
        m.passes.labels(self.model).observe(self.steps)
        m.requests.labels(self.model, finish_reason).inc()
        m.prompt_tokens.labels(self.model).inc(prompt_tokens)
        m.generation_tokens.labels(self.model).inc(completion_tokens)
