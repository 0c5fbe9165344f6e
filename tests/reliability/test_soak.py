"""The soak in short: loadtest/soak.py's clients (16 of them, for 8 s instead of 64 for 10 minutes) against
a real `inkwell-serve` serving both models. RELIABILITY.md has the long run's figures."""

from __future__ import annotations

import asyncio

from .conftest import API_KEY


def test_short_soak_has_no_unexpected_errors_and_leaves_the_server_clean(keyed_server, soak):
    target = soak.Target(keyed_server.url, keyed_server.proc.pid, API_KEY)
    run = asyncio.run(soak.run_soak(target, clients=16, duration=8, warmup=3, max_requests=5000,
                                    max_tokens=16, timeout=120))
    summary = soak.summarize(run, duration=8)
    assert summary["unexpected"] == 0, summary["unexpected_samples"]
    assert summary["completed"] >= 16 and set(summary["models"]) == {"tiny", "tiny-int4"}
    assert all(m["completed"] > 0 and m["e2e_p99_s"] is not None for m in summary["models"].values())
    assert summary["rss_after_warmup_mib"] > 0 and summary["rss_at_end_mib"] > 0
    assert soak.check_after(target) == {"gauges_after": {"num_requests_running": 0.0,
                                                         "num_requests_waiting": 0.0}, "request_after": "ok"}
