"""Fixtures of the export tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run the PyTorch reference side on one thread: on a shared 2-core machine OpenMP spin-waiting
    made batch-1 forwards of these small nets ~50x slower (measured) than a single thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
