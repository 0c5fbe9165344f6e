"""Locust load test of Inkwell's streaming chat completions (DESIGN section 10).

Each simulated user sends streaming `POST /v1/chat/completions` back to back (no think time), a line of
`prompts.txt` as the user message, reads the server-sent events itself (Locust's own timing of a streamed
response stops at the headers) and reports three kinds of entries per model, all of request type `SSE`:

    "<model> e2e"   one per request: end-to-end latency up to `data: [DONE]`; its response length is the
                    answer's completion tokens (from the usage chunk); it carries the request's failure
    "<model> ttft"  time to first token: the first chunk with non-empty `delta.content`
    "<model> itl"   inter-token latency: the gap between successive content chunks (a diffusion model may
                    commit several tokens per step, so a gap can cover several tokens)

A request fails when its status is not 200, the stream breaks or stalls, carries an error chunk
(`data: {"error": ...}`), or ends without `data: [DONE]` (see sse_stream.py).

Options, on the command line or through the environment variable after them; Locust's own options
(`--host`/`LOCUST_HOST`, `-u`, `-r`, `-t`, `--headless`, `--csv`, ...) work as usual:

    --model NAMES        INKWELL_MODEL           comma-separated served model names, used in turn
                                                 (default: every model of GET /v1/models)
    --api-key KEY        INKWELL_API_KEY         sent as `Authorization: Bearer KEY`
    --max-tokens N       INKWELL_MAX_TOKENS      answer length of every request (default: the model's)
    --extra-body JSON    INKWELL_EXTRA_BODY      a JSON object merged into every request: diffusion extras
                                                 such as {"steps": 16, "block_length": 32, "remasking":
                                                 "low_confidence", "threshold": 0.9, "cache": "dual"}, or
                                                 temperature, seed, ignore_eos (default {})
    --prompts PATH       INKWELL_PROMPTS         one prompt per line (default: prompts.txt beside this file)
    --stream-timeout S   INKWELL_STREAM_TIMEOUT  seconds without data before a stream counts as broken
                                                 (default 600, the server's own request deadline)

    locust -f loadtest/locustfile.py --headless -u 8 -r 8 -t 60s --host http://127.0.0.1:8000 \\
        --model inkwell-tiny --extra-body '{"steps": 32}'

`loadtest/run.py` runs this file once per model and writes the comparison report.
"""

from __future__ import annotations

import itertools
import json
import random
import sys
import time
from pathlib import Path

import gevent
import requests
from locust import HttpUser, constant, events, task
from locust.stats import CSV_STATS_INTERVAL_SEC
from sse_stream import StreamError, StreamTiming, read_stream

OWN_FIELDS = ("model", "messages", "stream", "stream_options", "max_tokens")
CHAT_PATH = "/v1/chat/completions"
PROMPTS = Path(__file__).with_name("prompts.txt")


@events.init_command_line_parser.add_listener
def add_options(parser) -> None:
    parser.add_argument("--model", env_var="INKWELL_MODEL", default="",
                        help="comma-separated served model names (default: every model of GET /v1/models)")
    parser.add_argument("--api-key", env_var="INKWELL_API_KEY", default="", is_secret=True,
                        help="sent as 'Authorization: Bearer KEY'")
    parser.add_argument("--max-tokens", env_var="INKWELL_MAX_TOKENS", type=int, default=None,
                        help="answer length of every request (default: the model's)")
    parser.add_argument("--extra-body", env_var="INKWELL_EXTRA_BODY", default="{}",
                        help="JSON object merged into every request (diffusion extras: steps, block_length, "
                             "remasking, threshold, cache, ...)")
    parser.add_argument("--prompts", env_var="INKWELL_PROMPTS", default=str(PROMPTS),
                        help="file with one prompt per line")
    parser.add_argument("--stream-timeout", env_var="INKWELL_STREAM_TIMEOUT", type=float, default=600.0,
                        help="seconds without data before a stream counts as broken")


@events.init.add_listener
def check_options(environment, **_) -> None:
    """Stop at start-up, with the reason, on options every request would trip over."""
    if environment.parsed_options is None:
        return
    try:
        base_body(environment.parsed_options)
        read_prompts(environment.parsed_options.prompts)
    except (ValueError, OSError) as err:
        sys.exit(f"locustfile: {err}")


@events.quitting.add_listener
def flush_final_stats(environment, **_) -> None:
    """Let Locust's CSV writer take one more turn: it rewrites `--csv` files every CSV_STATS_INTERVAL_SEC and
    not at exit, so requests that finished in the last interval (all of them, when the run ends with users
    finishing their streams under --stop-timeout) would be missing from `<prefix>_stats.csv`."""
    if environment.parsed_options is not None and environment.parsed_options.csv_prefix:
        gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.5)


def base_body(options) -> dict:
    """The fields every request shares: the extra body, the answer length, streaming with usage."""
    if options.max_tokens is not None and options.max_tokens < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {options.max_tokens}")
    try:
        extra = json.loads(options.extra_body)
    except ValueError as err:
        raise ValueError(f"--extra-body is not JSON: {err}") from None
    if not isinstance(extra, dict):
        raise ValueError(f"--extra-body must be a JSON object, got {options.extra_body!r}")
    clash = sorted(set(extra) & set(OWN_FIELDS))
    if clash:
        raise ValueError(f"--extra-body may not set {clash}: the load test sets {list(OWN_FIELDS)} itself")
    streaming = {"stream": True, "stream_options": {"include_usage": True}}
    length = {} if options.max_tokens is None else {"max_tokens": options.max_tokens}
    return extra | length | streaming


def read_prompts(path: str) -> list[str]:
    prompts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts


class ChatUser(HttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.body = base_body(options)
        self.prompts = read_prompts(options.prompts)
        self.headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
        self.timeout = options.stream_timeout
        names = [name.strip() for name in options.model.split(",") if name.strip()]
        self.models = itertools.cycle(names or self.served_models())

    def served_models(self) -> list[str]:
        """The ids of GET /v1/models (asked outside Locust's client so that it is not counted as load)."""
        response = requests.get(self.host.rstrip("/") + "/v1/models", headers=self.headers, timeout=30)
        response.raise_for_status()
        return [model["id"] for model in response.json()["data"]]

    @task
    def chat(self) -> None:
        model = next(self.models)
        messages = [{"role": "user", "content": random.choice(self.prompts)}]
        start = time.perf_counter()
        with self.client.post(CHAT_PATH, json=self.body | {"model": model, "messages": messages},
                              headers=self.headers, stream=True, catch_response=True, name=f"{model} e2e",
                              timeout=(30, self.timeout)) as response:
            response.request_meta["request_type"] = "SSE"
            try:
                timing = self.read(response, start)
            except (StreamError, requests.RequestException) as err:
                response.request_meta["response_time"] = (time.perf_counter() - start) * 1000
                response.failure(err)
                return
            finally:
                if response.raw is not None:  # None when the connection failed: nothing to close
                    response.close()
            response.request_meta["response_time"] = timing.e2e * 1000
            response.request_meta["response_length"] = timing.completion_tokens
            response.success()
        self.report_latencies(model, timing)

    @staticmethod
    def read(response, start: float) -> StreamTiming:
        if response.error is not None and response.status_code == 0:
            raise StreamError(f"no response: {response.error}")
        if response.status_code != 200:
            raise StreamError(f"HTTP {response.status_code}: {response.text[:300]}")
        return read_stream(response.iter_lines(chunk_size=None), start)

    def report_latencies(self, model: str, timing: StreamTiming) -> None:
        if timing.ttft is not None:
            self.fire(f"{model} ttft", timing.ttft)
        for gap in timing.itl:
            self.fire(f"{model} itl", gap)

    def fire(self, name: str, seconds: float) -> None:
        self.environment.events.request.fire(request_type="SSE", name=name, response_time=seconds * 1000,
                                             response_length=0, exception=None, context={})
