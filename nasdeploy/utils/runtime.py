"""Process-wide torch settings for one run, restored afterwards (determinism, CPU threads)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def runtime_settings(deterministic: bool = False, threads: int | None = None) -> Iterator[None]:
    """Enable deterministic algorithms and/or set the CPU thread count for the duration of a run."""
    previous_det = torch.are_deterministic_algorithms_enabled()
    previous_threads = torch.get_num_threads()
    if deterministic:
        torch.use_deterministic_algorithms(True)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous_det)
        torch.set_num_threads(previous_threads)
