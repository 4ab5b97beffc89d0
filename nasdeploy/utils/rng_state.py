"""Capture and restore every RNG a run draws from, as tensors (loadable with weights_only=True)."""

from __future__ import annotations

import random

import numpy as np
import torch


def capture_rng() -> dict[str, torch.Tensor]:
    """Python, NumPy and torch (CPU and CUDA) RNG states, complete (cached Gaussians included)."""
    version, words, gauss_next = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python_version": torch.tensor(version, dtype=torch.int64),
        "python": torch.tensor(words, dtype=torch.int64),
        "python_gauss": torch.tensor([float("nan") if gauss_next is None else gauss_next], dtype=torch.float64),
        "numpy": torch.from_numpy(keys.astype(np.int64)),
        "numpy_extra": torch.tensor([pos, has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor([cached], dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def restore_rng(state: dict[str, torch.Tensor]) -> None:
    """Restore what capture_rng() returned."""
    gauss = float(state["python_gauss"][0])
    random.setstate((int(state["python_version"]), tuple(int(v) for v in state["python"].tolist()),
                     None if gauss != gauss else gauss))
    pos, has_gauss = (int(v) for v in state["numpy_extra"].tolist())
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), pos, has_gauss,
                         float(state["numpy_gauss"][0])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
