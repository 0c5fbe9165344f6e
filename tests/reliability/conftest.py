"""Fixtures of the reliability tests: the fixture models and subprocess servers of tests/server, servers run
in this process (so a test can wrap the engine's model, the test-only fault hook, and look inside for
leaks), and the load scripts of loadtest/ loaded from their files."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from ..server.conftest import API_KEY, ServerProcess, free_port, model_dirs, start_server  # noqa: F401
from .inprocess import InProcessServer

LOADTEST = Path(__file__).resolve().parents[2] / "loadtest"


def load_script(name: str):
    """loadtest/<name>.py as a module (loadtest/ is a folder of scripts; storm.py imports soak)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, LOADTEST / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def soak():
    return load_script("soak")


@pytest.fixture(scope="session")
def storm(soak):
    return load_script("storm")


@pytest.fixture(scope="package")
def keyed_server(start_server) -> ServerProcess:  # noqa: F811 (the imported fixture)
    """One `inkwell-serve` for this folder: both fixture models, the API key, debug logging (so the tests
    can check the key never reaches the log)."""
    return start_server("--api-key", API_KEY, "--log-level", "debug")


@pytest.fixture
def in_process(model_dirs):  # noqa: F811 (the imported fixture)
    """in_process(engine_factory=None, **settings) -> a started InProcessServer serving `tiny` and
    `tiny-int4`; stopped after the test."""
    started: list[InProcessServer] = []

    def start(engine_factory=None, **settings) -> InProcessServer:
        fp, int4 = model_dirs
        server = InProcessServer((("tiny", str(fp)), ("tiny-int4", str(int4))), engine_factory, **settings)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
