"""Server overhead: time per request through `inkwell-serve` against the same request run offline.

    python -m inkwell.server.bench --model tiny=DIR --model tiny-int4=DIR [--max-tokens 32 128] [--repeats 5]

For each model and answer length, one chat request (greedy, fixed prompt) is timed three ways, each the
median of `--repeats` runs after a warm-up, all with one torch thread (the server too):
`generate` (the sampler called directly), `Engine.generate` (the scheduler thread, no HTTP), and the
server over HTTP on loopback, non-streaming and streaming (time to the last byte). The request is
converted exactly as the server converts it, so the three do the same denoising steps. Prints a
markdown table.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx
import torch
from inkwell.engine import generate
from inkwell.engine.engine import Engine, EngineRequest

from .models import load_served
from .protocol import ChatCompletionRequest
from .serving import ChatServing, diffusion_params
from .settings import parse_model_spec

PATH = "/v1/chat/completions"
PROMPT = [{"role": "user", "content": "To be, or not to be, that is the question"}]


def timed_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def interleaved(runs: dict[str, object], repeats: int) -> dict[str, float]:
    """Median ms of each callable, run in turn `repeats` times after one warm-up round, so that a change
    in the machine's load during the run affects all of them alike."""
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(repeats):
        for key, fn in runs.items():
            times[key].append(timed_ms(fn))
    return {key: statistics.median(t) for key, t in times.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models: list[tuple[str, str]]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = [a for name, source in models for a in ("--model", f"{name}={source}")]
    command = [sys.executable, "-m", "inkwell.server.cli", *args, "--port", str(port), "--threads", "1",
               "--log-level", "warning"]
    proc = subprocess.Popen(command, env=os.environ | {"OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(url, proc)
    return proc, url


def bench_model(name: str, source: str, client: httpx.Client, max_tokens: list[int],
                repeats: int) -> dict[int, dict[str, float]]:
    served = load_served(name, source)
    engine = Engine({name: served.model}, max_batch=1).start()
    out = {}
    try:
        for n in max_tokens:
            request = ChatCompletionRequest(model=name, messages=PROMPT, max_tokens=n, temperature=0)
            prompt, _ = ChatServing(state=None).prompt_ids(request, served)
            params = diffusion_params(request, n, served)
            ids = torch.tensor([prompt])
            one = EngineRequest("bench", name, prompt, params, served.stop_ids)
            body = {"model": name, "messages": PROMPT, "max_tokens": n, "temperature": 0}
            out[n] = interleaved({
                "generate": lambda i=ids, p=params: generate(served.model, i, p, stop_ids=served.stop_ids),
                "engine": lambda r=one: engine.generate([r]),
                "server": lambda b=body: client.post(PATH, json=b).raise_for_status(),
                "stream": lambda b=body: client.post(PATH, json=b | {"stream": True}).read(),
            }, repeats)
    finally:
        engine.close()
    return out


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the server did not become healthy")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m inkwell.server.bench",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=PATH_OR_NAME")
    parser.add_argument("--max-tokens", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    models = [parse_model_spec(m) for m in args.model]
    proc, url = start_server(models)
    try:
        with httpx.Client(base_url=url, timeout=300) as client:
            results = {name: bench_model(name, source, client, args.max_tokens, args.repeats)
                       for name, source in models}
    finally:
        proc.terminate()
        proc.wait(30)
    print("| model | max_tokens | `generate` ms | `Engine.generate` ms | server ms | server stream ms | "
          "server / generate |")
    print("|---|---|---|---|---|---|---|")
    for name, _ in models:
        for n in args.max_tokens:
            r = results[name][n]
            print(f"| {name} | {n} | {r['generate']:.1f} | {r['engine']:.1f} | {r['server']:.1f} | "
                  f"{r['stream']:.1f} | {r['server'] / r['generate']:.2f}x |")


if __name__ == "__main__":
    main()
