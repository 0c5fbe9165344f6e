"""Fixtures shared by the engine tests: one torch thread and the float64 tiny presets."""

import pytest
import torch
from inkwell.engine import load_model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny forwards run fastest on one thread (and far faster than two on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def llada64():
    return load_model("tiny-llada", dtype=torch.float64)


@pytest.fixture(scope="session")
def dream64():
    return load_model("tiny-dream", dtype=torch.float64)
