"""Settings for every plugin's tests."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One CPU thread: tiny tensors gain nothing from a second thread, and lose a lot on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
