"""Activation memory of one forward pass: every tensor storage an op allocates, and the peak alive."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


@dataclass(frozen=True)
class ActivationMemory:
    """Bytes of intermediate tensors in one forward (weights and the input excluded)."""

    total_bytes: int  # sum of all storages allocated by ops (what a no-reuse executor would need)
    peak_bytes: int  # largest amount alive at once
    tensors: int  # number of distinct storages allocated
    batch: int
    method: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"total_bytes": self.total_bytes, "peak_bytes": self.peak_bytes, "tensors": self.tensors,
                "batch": self.batch, "method": self.method}


class ActivationTracker(TorchDispatchMode):
    """Dispatch mode that follows the lifetime of every storage produced by an op.

    A storage is counted once (views and in-place results share it) and released when its last
    tensor dies (a weakref callback), so `peak_bytes` is the true high-water mark of eager execution.
    """

    method = "torch dispatch: storages allocated by ops, freed when their last tensor dies"

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        super().__init__()
        self._exclude = {id(t.untyped_storage()) for t in exclude}
        self._keep_excluded = [t.untyped_storage() for t in exclude]  # pin ids while tracking
        self._alive: dict[int, weakref.ref] = {}
        self.live_bytes = 0
        self.peak_bytes = 0
        self.total_bytes = 0
        self.tensors = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._exclude or key in self._alive:
            return
        nbytes = storage.nbytes()
        self._alive[key] = weakref.ref(storage, lambda _ref, key=key, nbytes=nbytes: self._release(key, nbytes))
        self.live_bytes += nbytes
        self.total_bytes += nbytes
        self.tensors += 1
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)

    def _release(self, key: int, nbytes: int) -> None:
        if self._alive.pop(key, None) is not None:
            self.live_bytes -= nbytes

    def result(self, batch: int) -> ActivationMemory:
        """The measured memory as a dataclass."""
        return ActivationMemory(self.total_bytes, self.peak_bytes, self.tensors, batch, self.method)
