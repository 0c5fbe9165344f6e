"""Disconnect storm: open many streams against `inkwell-serve` and drop each at a random point, then check
that the server is left clean: `/metrics` shows no running or waiting request, a normal request succeeds,
and the server's memory, threads and open file descriptors are back where they were.

    python loadtest/storm.py --streams 1000 --concurrency 64          # starts inkwell-serve (default models)
    python loadtest/storm.py --model fp=PATH --model q=PATH --rounds 4
    python loadtest/storm.py --url http://127.0.0.1:8000 --pid 1234   # attach to a running server

Each stream is a raw HTTP/1.1 request on its own socket, dropped at one of these points (chosen at random,
half of them with a TCP reset instead of a FIN):

- `body`: after the headers and half of the JSON body;
- `sent`: right after the whole request, before any answer;
- `headers`: after the response's status line;
- `stream`: after 1 to 12 `data:` events of the stream;
- `unary`: a non-streaming request, after 0 to 1.5 s.

The streams run in `--rounds` rounds; after each, the script waits for the server to settle and records its
resident memory, threads and file descriptors, so a leak shows as growth from round to round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from soak import Target, chat_body, check_after, wait_idle

DROP_POINTS = ("body", "sent", "headers", "stream", "unary")


def _request(target: Target, body: dict) -> tuple[bytes, bytes]:
    """(head, body) of a raw HTTP/1.1 POST /v1/chat/completions."""
    host = urlsplit(target.url).netloc
    payload = json.dumps(body).encode()
    auth = f"Authorization: {target.headers['Authorization']}\r\n" if target.headers else ""
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n{auth}Connection: close\r\n\r\n").encode()
    return head, payload


def _close(writer: asyncio.StreamWriter, reset: bool) -> None:
    if reset:  # SO_LINGER 0: the close sends RST, like a client that crashed or lost its network
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


async def drop_one(target: Target, model: str, point: str, rng: random.Random, max_tokens: int) -> str:
    """Open one request and abandon it at `point`; what the server had answered by then."""
    body = chat_body(model, max_tokens, rng) | {"stream": point != "unary"}
    head, payload = _request(target, body)
    parts = urlsplit(target.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    seen = "nothing"
    try:
        if point == "body":
            writer.write(head + payload[: len(payload) // 2])
            await writer.drain()
            await asyncio.sleep(rng.uniform(0, 0.2))
            return seen
        writer.write(head + payload)
        await writer.drain()
        if point == "sent":
            return seen
        if point == "unary":
            with contextlib.suppress(asyncio.TimeoutError):
                seen = (await asyncio.wait_for(reader.readline(), rng.uniform(0, 1.5))).decode().strip()
            return seen
        seen = (await reader.readline()).decode().strip()  # the status line
        if point == "stream":
            events = rng.randint(1, 12)
            while events and (line := await reader.readline()):
                events -= line.startswith(b"data: ")
        return seen
    finally:
        _close(writer, reset=rng.random() < 0.5)


@dataclass
class Storm:
    statuses: dict[str, int] = field(default_factory=dict)  # first status line seen -> count
    points: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # client-side failures to open a request
    rounds: list[dict] = field(default_factory=list)  # after each round: gauges and process info


async def run_storm(target: Target, streams: int, concurrency: int, seed: int = 0, max_tokens: int = 32,
                    storm: Storm | None = None) -> Storm:
    """Open `streams` requests, `concurrency` at a time, each dropped at a random point."""
    storm = storm or Storm()
    models = target.models()
    rng = random.Random(seed)
    plan = [(models[i % len(models)], rng.choice(DROP_POINTS), random.Random(rng.random()))
            for i in range(streams)]
    gate = asyncio.Semaphore(concurrency)

    async def one(model: str, point: str, own: random.Random) -> None:
        async with gate:
            try:
                seen = await drop_one(target, model, point, own, max_tokens)
            except OSError as err:
                storm.errors.append(f"{point}: {type(err).__name__}: {err}")
                return
            key = " ".join(seen.split(" ")[1:2]) or seen
            storm.statuses[key] = storm.statuses.get(key, 0) + 1
            storm.points[point] = storm.points.get(point, 0) + 1

    await asyncio.gather(*(one(*step) for step in plan))
    return storm


def settle(target: Target, timeout: float = 60) -> dict:
    """Wait until no request runs or waits, then read the process once more."""
    gauges = wait_idle(target, timeout)
    time.sleep(1.0)  # let closed connections and cancelled rows be collected
    return {"gauges": gauges, **target.process()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (default: start inkwell-serve)")
    parser.add_argument("--pid", type=int, help="the running server's process id (for its memory)")
    parser.add_argument("--model", action="append", default=[], help="NAME=PATH_OR_NAME for inkwell-serve")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra inkwell-serve argument")
    parser.add_argument("--api-key", default=os.environ.get("INKWELL_API_KEY"))
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4, help="the streams are split into this many rounds")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-rss-growth", type=float, default=5.0,
                        help="percent allowed from the end of round 1 to the end")
    parser.add_argument("--json", type=Path, help="write the summary here")
    parser.add_argument("--log", type=Path, default=Path("storm-server.log"))
    args = parser.parse_args(argv)

    if args.url:
        target = Target(args.url.rstrip("/"), args.pid, args.api_key)
    else:
        target = Target.start(args.model, args.serve_arg, args.log, args.api_key)
    storm = Storm()
    try:
        before = settle(target)
        start = time.monotonic()
        per_round = -(-args.streams // args.rounds)
        for r in range(args.rounds):
            count = min(per_round, args.streams - r * per_round)
            asyncio.run(run_storm(target, count, args.concurrency, args.seed + r, args.max_tokens, storm))
            storm.rounds.append(settle(target))
        elapsed = time.monotonic() - start
        after = check_after(target)
    finally:
        exit_code = target.stop()
    summary = {"streams": args.streams, "concurrency": args.concurrency, "seconds": round(elapsed, 1),
               "drop_points": storm.points, "first_status_seen": storm.statuses,
               "client_errors": len(storm.errors), "client_error_samples": storm.errors[:5],
               "before": before, "rounds": storm.rounds, **after, "server_exit_code": exit_code}
    if before.get("rss") and storm.rounds:
        first, last = storm.rounds[0]["rss"], storm.rounds[-1]["rss"]
        summary["rss_mib_before_round1_end"] = [round(before["rss"] / 2**20, 1), round(first / 2**20, 1),
                                                round(last / 2**20, 1)]
        summary["rss_growth_after_round1_pct"] = round(100 * (last / first - 1), 2)
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    failures = []
    if any(summary["gauges_after"].values()) or summary["request_after"] != "ok":
        failures.append(f"after the storm: {summary['gauges_after']}, request {summary['request_after']}")
    if summary.get("rss_growth_after_round1_pct", 0) >= args.max_rss_growth:
        failures.append(f"RSS grew {summary['rss_growth_after_round1_pct']} % after round 1")
    first, last = storm.rounds[0], storm.rounds[-1]  # round 1 is the baseline: first use starts threads
    for name in ("fds", "threads"):
        if name in first and last[name] > first[name]:
            failures.append(f"{name} grew after round 1: {first[name]} -> {last[name]}")
    if any(not s.startswith(("200", "429")) for s in storm.statuses if s != "nothing" and s):
        failures.append(f"unexpected statuses: {storm.statuses}")
    if exit_code not in (None, 0):
        failures.append(f"inkwell-serve exited {exit_code} on SIGTERM")
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
