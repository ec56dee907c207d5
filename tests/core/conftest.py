import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread_and_seed():
    """Tiny tensors: one intra-op thread is faster and steadier on small CI machines."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
