"""Schemathesis against the server's own OpenAPI schema: generated requests (valid and invalid) to every
operation, each checked for what a client relies on: never a 5xx, every error in OpenAI's shape
(`{"error": {message, type, param, code}}` with an `x-request-id`), and every stream ending in
`data: [DONE]` with no `server_error` chunk; every status documented in the schema for its operation, and
every JSON 200 body valid against that operation's response schema.

Streams are read to their end: schemathesis stops reading an event stream after 20 events unless told
otherwise, and a longer stream (`n: 2` or `commit_events`) then looks as if it ended without `[DONE]`; that
cap was the 1,000-case run's one "stream without [DONE]" (RELIABILITY.md). A stream the client still cuts
short (past the request timeout) is reported as such.

The schema is fetched from `/openapi.json` and capped before generation so that cases stay fast: `model`
is one of the served names (so valid cases really generate), answer lengths, steps, blocks and `n` are
small, strings and lists short. Invalid ("negative") cases break the uncapped rules too.

The test suite runs ~100 cases (`test_fuzz.py`); the long run is this module as a script:

    python -m tests.reliability.fuzz --cases 1000 --model tiny=PATH --model tiny-int4=PATH [--json OUT]
    python -m tests.reliability.fuzz --cases 1000 --url http://127.0.0.1:8000 --api-key KEY
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import hypothesis
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import response_schema_conformance

CAPS = {"max_tokens": 16, "max_completion_tokens": 16, "steps": 16, "block_length": 16, "n": 2}
MAX_STRING, MAX_ITEMS = 64, 8
ERROR_KEYS = {"message", "type", "param", "code"}
MAX_STREAM_EVENTS = 1_000_000  # read every stream to its end (schemathesis' default stops after 20 events)
# share of the cases per operation; the GET routes take no input, so one case each is all there is
WEIGHTS = {"/v1/chat/completions": 0.5, "/v1/completions": 0.5}


def request_components(schema: dict) -> set[str]:
    """Names of the component schemas that request bodies use, directly or through other components."""
    seen: set[str] = set()
    stack = [op.get("requestBody", {}) for path in schema["paths"].values() for op in path.values()]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/components/schemas/") and (name := ref.rsplit("/", 1)[1]) not in seen:
                seen.add(name)
                stack.append(schema["components"]["schemas"][name])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return seen


def capped(schema: dict, models: list[str]) -> dict:
    """The OpenAPI schema with small bounds on everything that makes a request slow (request schemas only:
    responses are checked against the schema as the server publishes it)."""
    schema = copy.deepcopy(schema)
    for component_name in request_components(schema):
        component = schema["components"]["schemas"][component_name]
        for name, prop in component.get("properties", {}).items():
            if name == "model":
                prop["enum"] = list(models)
            for branch in prop.get("anyOf", [prop]):
                if name in CAPS and branch.get("type") == "integer":
                    branch["maximum"] = min(branch.get("maximum", CAPS[name]), CAPS[name])
                if branch.get("type") == "string" and "enum" not in branch:
                    branch["maxLength"] = MAX_STRING
                if branch.get("type") == "array":
                    branch["maxItems"] = MAX_ITEMS
    return schema


@dataclass
class FuzzReport:
    calls: int = 0
    statuses: Counter = field(default_factory=Counter)
    by_operation: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    failed_cases: list[dict] = field(default_factory=list)  # whole request and response, to replay them
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"cases": self.calls, "seconds": round(self.seconds, 1),
                "statuses": dict(sorted(self.statuses.items())), "by_operation": dict(self.by_operation),
                "failures": len(self.failures), "failure_samples": self.failures[:10],
                "failed_cases": self.failed_cases[:10]}


def problems(status: int, headers: dict[str, str], text: str,
             documented: Collection[str] | None = None) -> list[str]:
    """What is wrong with one response (empty when nothing is); `headers` with lower-case names,
    `documented` the statuses the schema gives for the operation (None: not checked)."""
    out = []
    if status >= 500:
        out.append(f"HTTP {status}")
    if documented is not None and str(status) not in documented:
        out.append(f"HTTP {status} is not documented for this operation")
    if "x-request-id" not in headers:
        out.append("no x-request-id")
    if status >= 400:
        try:
            error = json.loads(text)["error"]
            if set(error) != ERROR_KEYS or not isinstance(error["message"], str):
                out.append(f"error not in OpenAI's shape: {error}")
        except (ValueError, KeyError, TypeError):
            out.append(f"error body is not {{'error': ...}}: {text[:200]!r}")
    elif status == 200 and headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
        if not data or data[-1] != "[DONE]":
            out.append("stream does not end with data: [DONE]")
        for payload in data[:-1]:
            error = json.loads(payload).get("error")
            if error is not None and (set(error) != ERROR_KEYS or error["type"] == "server_error"):
                out.append(f"error chunk: {error}")
    return out


def run_fuzz(url: str, cases: int, api_key: str | None = None, seed: int = 0,
             timeout: float = 120) -> FuzzReport:
    """About `cases` generated requests (half valid, half invalid) spread over the schema's operations."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    schema = load_schema(url, headers)
    report = FuzzReport()
    start = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        share = WEIGHTS.get(operation.path, 0.0)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            examples = max(1, round(cases * share / 2))
            _run_operation(operation, mode, examples, url, headers, timeout, seed, report)
    report.seconds = time.monotonic() - start
    return report


def load_schema(url: str, headers: dict[str, str], max_stream_events: int = MAX_STREAM_EVENTS):
    """The server's schema, capped, with schemathesis set to read streams of up to `max_stream_events`."""
    raw = httpx.get(url + "/openapi.json", headers=headers, timeout=30).json()
    models = [m["id"] for m in httpx.get(url + "/v1/models", headers=headers, timeout=30).json()["data"]]
    schema = schemathesis.openapi.from_dict(capped(raw, models))
    schema.config.max_stream_events = max_stream_events
    return schema


def check(case, url: str, headers: dict[str, str], timeout: float):
    """Send one case; (its response, what is wrong with it)."""
    response = case.call(base_url=url, headers=headers, timeout=timeout)
    if response.stream_cut_short:  # what was read is not the whole stream: its end cannot be judged
        return response, ["the client stopped reading the stream before its end (the request timeout)"]
    lower = {k.lower(): v[0] if isinstance(v, list) else v for k, v in response.headers.items()}
    documented = case.operation.definition.raw["responses"]
    found = problems(response.status_code, lower, response.text, documented)
    if response.status_code == 200 and lower.get("content-type", "").startswith("application/json"):
        try:  # a 200 body must be what the schema says the operation answers
            case.validate_response(response, checks=[response_schema_conformance])
        except Exception as err:  # schemathesis' failure group: its message names the mismatch
            found.append(f"200 body does not match the schema: {str(err)[:300]}")
    return response, found


def _run_operation(operation, mode, examples, url, headers, timeout, seed, report: FuzzReport) -> None:
    strategy = operation.as_strategy(generation_mode=mode)

    name = f"{operation.method.upper()} {operation.path}"

    @hypothesis.seed(seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def one(case) -> None:  # failures are collected, not raised: no shrinking, every case counted
        report.calls += 1
        report.by_operation[f"{name} {mode.value}"] += 1
        body = repr(case.body)[:300]
        try:
            response, found = check(case, url, headers, timeout)
        except Exception as err:  # a hang or a dropped connection is a finding too
            report.failures.append(f"{name} {body}: {type(err).__name__}: {err}")
            return
        report.statuses[response.status_code] += 1
        for problem in found:
            report.failures.append(f"{name} {body}: {problem}")
            report.failed_cases.append({"operation": name, "body": case.body, "status": response.status_code,
                                        "headers": dict(response.headers), "response": response.text[-4000:]})

    try:
        one()
    except Unsatisfiable:  # no invalid request exists for an operation without parameters or body
        if mode is GenerationMode.POSITIVE:
            raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (default: start inkwell-serve with --model)")
    parser.add_argument("--model", action="append", default=[], help="NAME=PATH_OR_NAME for inkwell-serve")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra inkwell-serve argument")
    parser.add_argument("--api-key", default="fuzz-key")
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--log", type=Path, default=Path("fuzz-server.log"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "loadtest"))
    from soak import Target  # the same server starter as the soak

    if args.url:
        target = Target(args.url.rstrip("/"), None, args.api_key)
    else:
        target = Target.start(args.model, args.serve_arg, args.log, args.api_key)
    try:
        report = run_fuzz(target.url, args.cases, target.api_key, args.seed)
    finally:
        exit_code = target.stop()
    summary = report.to_dict() | {"server_exit_code": exit_code}
    print(json.dumps(summary, indent=2, default=repr))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=repr) + "\n")
    return 1 if report.failures or exit_code not in (None, 0) else 0


if __name__ == "__main__":
    sys.exit(main())
