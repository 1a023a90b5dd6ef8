import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny tensors gain nothing from threads, and on a shared CPU extra threads spin."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("PERSONALIGN_THREADS", "1")))
    yield
    torch.set_num_threads(before)
