"""Training tests run single-threaded: many small ops on a shared 2-core machine slow down badly with a
contended thread pool."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
