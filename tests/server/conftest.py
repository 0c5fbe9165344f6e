"""Real `inkwell-serve` processes on loopback ports, serving the tiny FP and int4 fixture models.

Each server is a subprocess started exactly as a user would (`python -m inkwell.server.cli ...`), so the
tests see uvicorn, sse-starlette, signal handling and the exit code for real. Torch runs one thread per
server: on this shared 2-core machine that is several times faster than two contending threads.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .fixtures import build_models

API_KEY = "test-key-7f3a"


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> tuple[Path, Path]:
    return build_models(tmp_path_factory.mktemp("served"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, args: list[str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env.pop("INKWELL_API_KEY", None)
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "inkwell.server.cli", "--port", str(self.port), "--threads", "1",
             "--log-level", "warning", *args], stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)

    def wait_port(self, timeout: float = 60) -> None:
        """Until the port accepts connections (the server answers before its models are loaded)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.check_alive()
            try:
                httpx.get(self.url + "/health", timeout=2)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise TimeoutError(f"server did not open its port in {timeout} s:\n{self.log.read_text()}")

    def wait_healthy(self, timeout: float = 300) -> None:  # start-up takes minutes on a busy machine
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.check_alive()
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not healthy in {timeout} s:\n{self.log.read_text()}")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def start_server(model_dirs, tmp_path_factory):
    """start_server(*extra_args, wait=True) -> ServerProcess serving `tiny` (FP) and `tiny-int4`."""
    fp, int4 = model_dirs
    started: list[ServerProcess] = []

    def start(*extra: str, wait: bool = True) -> ServerProcess:
        log = tmp_path_factory.mktemp("server") / "server.log"
        server = ServerProcess(["--model", f"tiny={fp}", "--model", f"tiny-int4={int4}", *extra], log)
        started.append(server)
        if wait:
            server.wait_healthy()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(start_server) -> ServerProcess:
    """The main server: both models, an API key, default limits."""
    return start_server("--api-key", API_KEY)
