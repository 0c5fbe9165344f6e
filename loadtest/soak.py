"""Soak test: hold N concurrent streaming clients against `inkwell-serve` for a fixed time, bounded in count
and time, and report what a deployment cares about: requests completed, unexpected errors (must be 0; 429s
from the bounded queue are counted apart), p50/p99 latencies per model, and the server's resident memory
after warm-up and at the end (growth must stay under 5 %).

    python loadtest/soak.py --duration 600 --clients 64        # starts inkwell-serve with its default models
    python loadtest/soak.py --model fp=PATH --model q=PATH      # ... or with these models
    python loadtest/soak.py --url http://127.0.0.1:8000 --pid 1234   # attach to a running server

Each client loops: a streaming chat completion on the next model (round-robin over `/v1/models`), read to
`data: [DONE]`. A request counts as completed when it answered 200, every choice finished and the stream
ended with `[DONE]` and no error chunk; anything else (other statuses, error chunks, cut streams, transport
errors, timeouts) is unexpected. The server is then checked for leftovers (`/metrics` shows 0 running and
0 waiting) and must answer one more request. Exit status 1 when any check fails.

Talks HTTP only (DESIGN section 10); the helpers here (`Target`, `stream_once`, `gauges`) are shared with
`storm.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PROMPTS = ["Tell me a story about the sea.", "What is the capital of France?", "Write a haiku about autumn.",
           "Explain photosynthesis simply.", "List three prime numbers.", "Say hello in Spanish.",
           "Why is the sky blue?", "Describe a cat in one sentence."]


# ---- the server under test ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Target:
    """A server to load: its URL, its process id (for memory), its key, and the process if we started it."""

    url: str
    pid: int | None = None
    api_key: str | None = None
    proc: subprocess.Popen | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @classmethod
    def start(cls, models: list[str], extra: list[str], log: Path, api_key: str | None = None,
              timeout: float = 900) -> Target:
        """Start `inkwell-serve` on a free loopback port and wait until /health says 200."""
        port = free_port()
        script = Path(sys.executable).with_name("inkwell-serve")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "inkwell.server.cli"]
        args = [*command, "--port", str(port), "--log-level", "warning", *extra]
        for spec in models:
            args += ["--model", spec]
        if api_key:
            args += ["--api-key", api_key]
        proc = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        target = cls(f"http://127.0.0.1:{port}", proc.pid, api_key, proc)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise RuntimeError(f"inkwell-serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(target.url + "/health", timeout=5).status_code == 200:
                    return target
            time.sleep(0.5)
        proc.kill()
        raise TimeoutError(f"inkwell-serve not healthy in {timeout} s:\n{log.read_text()[-4000:]}")

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM (the server drains) and its exit status; None when we did not start it."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9

    def models(self) -> list[str]:
        r = httpx.get(self.url + "/v1/models", headers=self.headers, timeout=30)
        r.raise_for_status()
        return [m["id"] for m in r.json()["data"]]

    def process(self) -> dict[str, int]:
        """The server's resident memory (bytes), threads and open file descriptors, from /proc."""
        if self.pid is None:
            return {}
        status = Path(f"/proc/{self.pid}/status").read_text()
        rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) * 1024
        threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))
        return {"rss": rss, "threads": threads, "fds": len(os.listdir(f"/proc/{self.pid}/fd"))}


def gauges(target: Target) -> dict[str, float]:
    """`num_requests_running` and `num_requests_waiting` summed over the models, from /metrics."""
    text = httpx.get(target.url + "/metrics", headers=target.headers, timeout=30).text
    out = {}
    for name in ("num_requests_running", "num_requests_waiting"):
        out[name] = sum(float(v) for v in re.findall(rf"^inkwell:{name}{{[^}}]*}} (\S+)$", text, re.M))
    return out


def wait_idle(target: Target, timeout: float = 60) -> dict[str, float]:
    """Poll /metrics until nothing runs or waits (or the timeout passes); the last reading."""
    end = time.monotonic() + timeout
    while True:
        reading = gauges(target)
        if not any(reading.values()) or time.monotonic() > end:
            return reading
        time.sleep(0.2)


# ---- one streamed request ----------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str  # "ok", "429" or "unexpected"
    model: str
    detail: str = ""
    ttft: float | None = None  # seconds to the first non-empty content
    e2e: float | None = None


def chat_body(model: str, max_tokens: int, rng: random.Random) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
            "max_tokens": max_tokens, "stream": True, "temperature": 1.0, "seed": rng.randrange(1 << 30)}


async def stream_once(client: httpx.AsyncClient, target: Target, body: dict, timeout: float) -> Outcome:
    """POST one streaming chat completion and read it to the end (at most `timeout` s); classify it."""
    start = time.monotonic()
    try:
        return await asyncio.wait_for(_read_stream(client, target, body, start), timeout)
    except asyncio.TimeoutError:
        return Outcome("unexpected", body["model"], f"no end within {timeout} s")
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as err:
        return Outcome("unexpected", body["model"], f"{type(err).__name__}: {err}")


async def _read_stream(client: httpx.AsyncClient, target: Target, body: dict, start: float) -> Outcome:
    model, ttft, done, finished = body["model"], None, False, set()
    async with client.stream("POST", target.url + "/v1/chat/completions", json=body,
                             headers=target.headers) as r:
        if r.status_code == 429:
            await r.aread()
            return Outcome("429", model, r.headers.get("retry-after", ""))
        if r.status_code != 200:
            return Outcome("unexpected", model, f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            chunk = json.loads(line[len("data: "):])
            if "error" in chunk:
                return Outcome("unexpected", model, f"error chunk: {chunk['error']}")
            for choice in chunk.get("choices", []):
                if choice["delta"].get("content") and ttft is None:
                    ttft = time.monotonic() - start
                if choice.get("finish_reason"):
                    finished.add(choice["index"])
    if not done or len(finished) != body.get("n", 1):
        return Outcome("unexpected", model, f"stream cut: [DONE] {done}, finished choices {sorted(finished)}")
    return Outcome("ok", model, ttft=ttft, e2e=time.monotonic() - start)


# ---- the soak ----------------------------------------------------------------------------------------


@dataclass
class Soak:
    outcomes: list[Outcome] = field(default_factory=list)
    samples: list[tuple[float, dict]] = field(default_factory=list)  # (seconds since start, process info)
    warm: dict | None = None  # process info when warm-up ended
    end: dict | None = None


async def _client(target: Target, models: list[str], deadline: float, budget: list[int], soak: Soak,
                  seed: int, max_tokens: int, timeout: float) -> None:
    rng = random.Random(seed)
    turn = seed
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout), limits=limits) as client:
        while time.monotonic() < deadline and budget[0] > 0:
            budget[0] -= 1
            body = chat_body(models[turn % len(models)], max_tokens, rng)
            outcome = await stream_once(client, target, body, timeout)
            soak.outcomes.append(outcome)
            turn += 1
            if outcome.kind == "429":
                await asyncio.sleep(min(5.0, float(outcome.detail or 1)))


async def _sampler(target: Target, start: float, warmup: float, deadline: float, soak: Soak,
                   every: float = 5.0) -> None:
    while time.monotonic() < deadline:
        info = target.process()
        soak.samples.append((time.monotonic() - start, info))
        if soak.warm is None and time.monotonic() - start >= warmup:
            soak.warm = info
        await asyncio.sleep(min(every, max(0.1, deadline - time.monotonic())))


async def run_soak(target: Target, clients: int, duration: float, warmup: float, max_requests: int,
                   max_tokens: int = 32, timeout: float = 660) -> Soak:
    """`clients` concurrent streaming clients for `duration` seconds (at most `max_requests` in all); a
    request unfinished after `timeout` s (default: the server's 600 s deadline and a minute) is unexpected."""
    models = target.models()
    soak = Soak()
    start = time.monotonic()
    deadline = start + duration
    budget = [max_requests]
    sampler = asyncio.create_task(_sampler(target, start, warmup, deadline, soak))
    await asyncio.gather(*(_client(target, models, deadline, budget, soak, i, max_tokens, timeout)
                           for i in range(clients)))
    await sampler
    soak.end = target.process()
    return soak


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def summarize(soak: Soak, duration: float) -> dict:
    by_kind = {k: [o for o in soak.outcomes if o.kind == k] for k in ("ok", "429", "unexpected")}
    models = sorted({o.model for o in soak.outcomes})
    latency = {}
    for model in models:
        ok = [o for o in by_kind["ok"] if o.model == model]
        ttft = [o.ttft for o in ok if o.ttft is not None]
        e2e = [o.e2e for o in ok]
        latency[model] = {"completed": len(ok), "ttft_p50_s": percentile(ttft, 50),
                          "ttft_p99_s": percentile(ttft, 99), "e2e_p50_s": percentile(e2e, 50),
                          "e2e_p99_s": percentile(e2e, 99)}
    out = {"duration_s": duration, "completed": len(by_kind["ok"]), "rate_limited_429": len(by_kind["429"]),
           "unexpected": len(by_kind["unexpected"]),
           "unexpected_samples": sorted({o.detail for o in by_kind["unexpected"]})[:10],
           "requests_per_s": round(len(by_kind["ok"]) / duration, 3), "models": latency}
    if soak.warm and soak.end:
        out["rss_after_warmup_mib"] = round(soak.warm["rss"] / 2**20, 1)
        out["rss_at_end_mib"] = round(soak.end["rss"] / 2**20, 1)
        out["rss_growth_pct"] = round(100 * (soak.end["rss"] / soak.warm["rss"] - 1), 2)
        out["rss_max_mib"] = round(max(s["rss"] for _, s in soak.samples if s) / 2**20, 1)
        out["threads_warm_end"] = [soak.warm["threads"], soak.end["threads"]]
    return out


def check_after(target: Target, timeout: float = 60) -> dict:
    """After the load: no request left running or waiting, and a normal request still succeeds."""
    idle = wait_idle(target, timeout)
    rng = random.Random(0)

    async def one() -> Outcome:
        async with httpx.AsyncClient(timeout=120) as client:
            return await stream_once(client, target, chat_body(target.models()[0], 16, rng), 120)

    outcome = asyncio.run(one())
    return {"gauges_after": idle, "request_after": outcome.kind if outcome.kind == "ok" else outcome.detail}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (default: start inkwell-serve)")
    parser.add_argument("--pid", type=int, help="the running server's process id (for its memory)")
    parser.add_argument("--model", action="append", default=[], help="NAME=PATH_OR_NAME for inkwell-serve")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra inkwell-serve argument")
    parser.add_argument("--api-key", default=os.environ.get("INKWELL_API_KEY"))
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the memory baseline")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="bound on requests in all")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=660.0, help="seconds one request may take")
    parser.add_argument("--max-rss-growth", type=float, default=5.0, help="percent allowed after warm-up")
    parser.add_argument("--json", type=Path, help="write the summary here")
    parser.add_argument("--log", type=Path, default=Path("soak-server.log"))
    args = parser.parse_args(argv)

    if args.url:
        target = Target(args.url.rstrip("/"), args.pid, args.api_key)
    else:
        target = Target.start(args.model, args.serve_arg, args.log, args.api_key)
    try:
        soak = asyncio.run(run_soak(target, args.clients, args.duration, args.warmup, args.max_requests,
                                    args.max_tokens, args.timeout))
        summary = summarize(soak, args.duration) | check_after(target)
    finally:
        exit_code = target.stop()
    summary["server_exit_code"] = exit_code
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    failures = []
    if summary["unexpected"]:
        failures.append(f"{summary['unexpected']} unexpected errors")
    if summary.get("rss_growth_pct", 0) >= args.max_rss_growth:
        failures.append(f"RSS grew {summary['rss_growth_pct']} % after warm-up")
    if any(summary["gauges_after"].values()) or summary["request_after"] != "ok":
        failures.append(f"after the soak: {summary['gauges_after']}, request {summary['request_after']}")
    if exit_code not in (None, 0):
        failures.append(f"inkwell-serve exited {exit_code} on SIGTERM")
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
