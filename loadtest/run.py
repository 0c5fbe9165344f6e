"""Headless load test of a running `inkwell-serve`: one Locust run per served model, then a markdown report
comparing them (FP against int4 for the default server).

    python loadtest/run.py --host http://127.0.0.1:8000 --users 8 --run-time 60s --out runs/loadtest
    python loadtest/run.py --model llada --model llada-int4 --extra-body '{"steps": 64}' -- --loglevel WARNING

Each model gets the same load on its own (`--users` users for `--run-time`, no think time); users still
streaming when the time is up finish their request (up to `--stop-timeout`). `--out` receives Locust's CSVs
and HTML report per model (`<model>_stats.csv`, ...) and `report.md`, which is also printed. Arguments after
`--` go to Locust unchanged. Exit status: 0 when every model completed requests and none failed, 1 when a
request failed or a model completed none, 2 when the server could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

from report import ModelResult, markdown, read_result

HERE = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("LOCUST_HOST", "http://127.0.0.1:8000"),
                        help="the server (default: $LOCUST_HOST or http://127.0.0.1:8000)")
    parser.add_argument("--model", action="append", default=[],
                        help="served model to test; repeatable (default: every model of GET /v1/models)")
    parser.add_argument("--users", type=int, default=8, help="concurrent users per model (default 8)")
    parser.add_argument("--spawn-rate", type=float, default=None, help="users started per second "
                        "(default: all at once)")
    parser.add_argument("--run-time", default="60s", help="duration per model, Locust's format (default 60s)")
    parser.add_argument("--stop-timeout", default="600s", help="how long running requests may finish after "
                        "the run time (default 600s, the server's default request deadline)")
    parser.add_argument("--max-tokens", type=int, default=None, help="answer length (default: the model's)")
    parser.add_argument("--extra-body", default="{}", help="JSON object merged into every request (steps, "
                        "block_length, remasking, threshold, cache, ...)")
    parser.add_argument("--prompts", default=str(HERE / "prompts.txt"), help="one prompt per line")
    parser.add_argument("--out", type=Path, default=None, help="folder for the CSVs and report.md "
                        "(default: loadtest/results/<UTC time>)")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for /health to answer 200 "
                        "(default: ask once)")
    return parser


def api_get(host: str, path: str, api_key: str | None) -> tuple[int, bytes]:
    request = urllib.request.Request(host.rstrip("/") + path,
                                     headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_healthy(host: str, seconds: float) -> str | None:
    """None once /health answers 200, else why not (after `seconds`)."""
    end = time.monotonic() + seconds
    while True:
        try:
            status, body = api_get(host, "/health", None)
            problem = None if status == 200 else f"/health answered {status}: {body[:200]!r}"
        except OSError as err:
            problem = f"cannot reach {host}: {err}"
        if problem is None or time.monotonic() >= end:
            return problem
        time.sleep(1.0)


def served_models(host: str, api_key: str | None) -> list[str]:
    status, body = api_get(host, "/v1/models", api_key)
    if status != 200:
        raise OSError(f"GET /v1/models answered {status}: {body[:200]!r}")
    return [model["id"] for model in json.loads(body)["data"]]


def run_locust(args: argparse.Namespace, model: str, prefix: Path, locust_args: list[str]) -> int:
    """One headless Locust run against `model`; its CSVs and HTML report start with `prefix`."""
    command = [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless",
               "--only-summary", "--host", args.host, "--users", str(args.users),
               "--spawn-rate", str(args.spawn_rate or args.users), "--run-time", args.run_time,
               "--stop-timeout", args.stop_timeout, "--csv", str(prefix),
               "--html", f"{prefix}.html", "--model", model, "--extra-body", args.extra_body,
               "--prompts", args.prompts]
    if args.max_tokens is not None:
        command += ["--max-tokens", str(args.max_tokens)]
    command += locust_args
    print(f"== {model}: {args.users} users for {args.run_time}", flush=True)
    return subprocess.run(command, env=os.environ | {"PYTHONUNBUFFERED": "1"}).returncode


def setup_lines(args: argparse.Namespace, models: list[str]) -> list[tuple[str, str]]:
    return [("date", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
            ("server", args.host), ("models", ", ".join(f"`{m}`" for m in models)),
            ("load", f"{args.users} users per model, one model at a time, {args.run_time} each, "
                     "no think time"),
            ("requests", f"streaming chat completions, max_tokens {args.max_tokens or 'of the model'}, "
                         f"extra body `{args.extra_body}`, prompts from `{Path(args.prompts).name}`"),
            ("client", f"Locust {version('locust')}, {os.cpu_count()} CPUs")]


def verdict(results: list[ModelResult], crashed: list[str]) -> list[str]:
    """Why the run failed; empty when it passed."""
    problems = [f"locust did not finish its run against {m}" for m in crashed]
    problems += [f"{r.failures} of {r.requests} requests to {r.model} failed" for r in results if r.failures]
    problems += [f"no request to {r.model} completed" for r in results if r.requests == 0]
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args, locust_args = build_parser().parse_args(argv[:split]), argv[split + 1:]
    api_key = os.environ.get("INKWELL_API_KEY")
    problem = wait_healthy(args.host, args.wait)
    try:
        models = args.model or ([] if problem else served_models(args.host, api_key))
    except OSError as err:
        problem = str(err)
    if problem:
        sys.stderr.write(f"loadtest: {problem}\n")
        return 2
    out = args.out or HERE / "results" / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    results, crashed = [], []
    for model in models:
        prefix = out / re.sub(r"[^A-Za-z0-9._-]", "_", model)
        returncode = run_locust(args, model, prefix, locust_args)
        if returncode not in (0, 1) or not Path(f"{prefix}_stats.csv").exists():
            crashed.append(model)  # Locust exits 1 when a request failed, which the report shows
            continue
        results.append(read_result(prefix, model))
    report = markdown(results, setup_lines(args, models))
    (out / "report.md").write_text(report, encoding="utf-8")
    print(f"\n{report}\nwritten to {out / 'report.md'}")
    problems = verdict(results, crashed)
    for line in problems:
        sys.stderr.write(f"loadtest: {line}\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
