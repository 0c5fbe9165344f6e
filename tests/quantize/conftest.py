"""The quantize tests run many small forwards: one torch thread each is much faster than two threads
that wait for each other on a shared, busy CPU. The previous setting is restored after each test."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
