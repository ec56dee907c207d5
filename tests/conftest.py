"""Fixtures for the whole suite."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Benchmarks' ``main`` functions set torch's thread count for their timing; restore it so
    that a test runs with the same threads whatever ran before it."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
