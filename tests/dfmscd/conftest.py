"""Shared fixtures of the library tests."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Two OpenMP threads on two shared cores stall each other (10x slower here); use one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
