"""Endless iteration over a DataLoader (each pass reshuffles through its sampler)."""

from __future__ import annotations

from typing import Any, Iterator

from torch.utils.data import DataLoader


def cycle_loader(loader: DataLoader) -> Iterator[Any]:
    """Batches of `loader`, pass after pass, without end."""
    while True:
        yield from loader
