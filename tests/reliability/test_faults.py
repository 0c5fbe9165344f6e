"""Fault isolation and disconnect storms, on a server run in this process.

The fault hook is the test's own engine factory: it wraps the `tiny` model's forward so that any forward
whose input holds a poison 6-gram of token ids raises. The engine retries a failing batched forward row by
row, so only the poisoned request may fail; requests batched with it must finish exactly as they do alone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time

import httpx
import torch
from inkwell.server.engine_client import make_engine

from ..server.sse import post_stream
from .inprocess import engine_report, live_request_objects

POISON = [500, 501, 502, 503, 504, 505]  # six distinct ids no prompt here holds, and sampling won't write
CLEAN = {"generations": 0, "engine_waiting": 0, "engine_running": 0, "metric_waiting_rows": 0}
FAULT_SEED = 4242  # choice 1 of a request with this seed fails mid-stream (`failing_choice_factory`)


def poisoning_factory(models, settings):
    """make_engine, with `tiny`'s forward raising on inputs that hold POISON (test-only fault injection)."""
    model = models["tiny"].model
    real_forward = model.forward
    poison = torch.tensor(POISON)
    seen = {"faults": 0}

    def forward(input_ids, *args, **kwargs):
        windows = input_ids.unfold(-1, len(POISON), 1)  # [B, L - 5, 6]
        if bool((windows == poison.to(input_ids.device)).all(-1).any()):
            seen["faults"] += 1
            raise RuntimeError("injected fault in the model forward")
        return real_forward(input_ids, *args, **kwargs)

    model.forward = forward
    engine = make_engine(models, settings)
    engine.faults = seen
    return engine


def failing_choice_factory(models, settings):
    """make_engine, where the row seeded FAULT_SEED + 1 (choice 1 of a request seeded FAULT_SEED: row i uses
    seed + i) fails after two step events (test-only fault injection; later items of that row are dropped)."""
    engine = make_engine(models, settings)
    submit = engine.submit

    def faulty_submit(request, sink, **kwargs):
        if request.seed != FAULT_SEED + 1:
            return submit(request, sink, **kwargs)
        delivered = 0

        def faulty_sink(item) -> None:
            nonlocal delivered
            delivered += 1
            if delivered <= 2:
                sink(item)
            elif delivered == 3:
                sink(RuntimeError("injected fault in choice 1"))

        return submit(request, faulty_sink, **kwargs)

    engine.submit = faulty_submit
    return engine


def body(i: int) -> dict:
    return {"model": "tiny", "prompt": f"All the world's a stage, line {i}", "max_tokens": 32,
            "temperature": 1.0, "seed": 100 + i, "commit_events": True}


def test_a_request_that_fails_in_the_engine_fails_alone(in_process, model_dirs):
    server = in_process(poisoning_factory, max_batch=8)
    poisoned = {"model": "tiny", "prompt": [5, 6, *POISON, 7], "max_tokens": 32, "commit_events": True}
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        healthy = [pool.submit(post_stream, server.url, "/v1/completions", body(i)) for i in range(4)]
        time.sleep(0.3)  # the healthy rows are running when the poisoned one joins their batch
        bad = pool.submit(post_stream, server.url, "/v1/completions", poisoned)
        late = pool.submit(post_stream, server.url, "/v1/completions", body(4))
        results = [f.result(120) for f in healthy] + [late.result(120)]
        failed = bad.result(120)

    assert server.state.engine.faults["faults"] >= 1
    assert failed.status == 200 and failed.done, failed.raw
    error = failed.events[-1]["error"]
    assert error["type"] == "server_error" and "choices" not in failed.events[-1]
    assert set(error) == {"message", "type", "param", "code"} and "injected" not in error["message"]
    for i, s in enumerate(results):
        assert s.status == 200 and s.done and s.finish_reasons[0] in ("stop", "length"), s.raw[-300:]
        assert not any("error" in e for e in s.events)
        alone = post_stream(server.url, "/v1/completions", body(i))
        assert alone.text_by_choice == s.text_by_choice, f"request {i} changed by its failing neighbour"
    unary = httpx.post(server.url + "/v1/completions", json=poisoned | {"commit_events": False}, timeout=120)
    assert unary.status_code == 500 and unary.json()["error"]["code"] == "internal_error"
    assert server.state.engine._thread.is_alive()
    assert server.settle() == ([], CLEAN), engine_report(server.state.engine)


def test_disconnect_storm_leaves_nothing_behind(in_process, storm, soak, caplog):
    """120 requests dropped at random points (mid-body, before or after headers, mid-stream, non-streaming):
    afterwards no task, generation, engine row or metric is left, and a normal request succeeds."""
    server = in_process(max_batch=4, max_queue=16)
    target = soak.Target(server.url)
    assert soak.check_after(target)["request_after"] == "ok"  # warm: the first request starts what it needs
    assert server.settle() == ([], CLEAN), engine_report(server.state.engine)

    result = asyncio.run(storm.run_storm(target, streams=120, concurrency=24, seed=7, max_tokens=32))
    assert not result.errors and set(result.points) == set(storm.DROP_POINTS)
    assert set(result.statuses) <= {"nothing", "200", "429", ""}, result.statuses

    after = soak.check_after(target, timeout=30)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], "a dropped client must not be an unhandled server error"
    assert after == {"gauges_after": {"num_requests_running": 0.0, "num_requests_waiting": 0.0},
                     "request_after": "ok"}
    # Connections the storm dropped close on the server's next reads, and a cancelled row leaves the engine
    # at the scheduler's next step: settle, then nothing may be left (a leaked row would outlast 60 s).
    assert server.settle() == ([], CLEAN), engine_report(server.state.engine)
    assert live_request_objects(server.state.engine) == 0


def test_every_stream_ends_with_done_when_a_choice_fails_or_stops(in_process):
    """One of n=2 choices failing mid-stream: both choices had streamed, then one `server_error` chunk, then
    `[DONE]`, and the other choice is cancelled; non-streaming, the same is a 500. n=2 choices ending at stop
    strings, with the usage chunk: `[DONE]` after both finish reasons and the usage."""
    server = in_process(failing_choice_factory)
    failing = {"model": "tiny", "prompt": "All the world", "max_tokens": 32, "n": 2, "seed": FAULT_SEED,
               "commit_events": True}
    failed = post_stream(server.url, "/v1/completions", failing)
    assert failed.status == 200 and failed.done, failed.raw[-300:]
    assert failed.events[-1]["error"]["type"] == "server_error" and "choices" not in failed.events[-1]
    assert {c["index"] for e in failed.events[:-1] for c in e["choices"]} == {0, 1}
    assert not failed.finish_reasons  # neither choice finished: the request failed as a whole
    unary = httpx.post(server.url + "/v1/completions", json=failing | {"commit_events": False}, timeout=120)
    assert unary.status_code == 500 and unary.json()["error"]["code"] == "internal_error"

    stopping = {"model": "tiny", "messages": [{"role": "user", "content": "All the world"}], "max_tokens": 32,
                "n": 2, "seed": 7, "stop": [" ", "e", "a"], "stream_options": {"include_usage": True}}
    stopped = post_stream(server.url, "/v1/chat/completions", stopping)
    assert stopped.status == 200 and stopped.done, stopped.raw[-300:]
    assert set(stopped.finish_reasons) == {0, 1} and not any("error" in e for e in stopped.events)
    assert stopped.events[-1]["choices"] == [] and stopped.events[-1]["usage"]["completion_tokens"] >= 0

    assert server.settle() == ([], CLEAN), engine_report(server.state.engine)
