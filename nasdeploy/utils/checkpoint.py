"""Checkpoints: atomic save, weights_only load, and the one format train/search/export share.

A nasdeploy checkpoint is a dict saved with torch.save:
    {"format": "nasdeploy.checkpoint", "version": 1, "kind": "train" | "search" | ...,
     "model": state_dict, "meta": {...JSON-able: genotype dict, net, net_kwargs, epoch, ...},
     ...any other state the producer needs to resume (optimizer, scheduler, rng, epoch)}
A plain state_dict (as the DARTS reference code saved) is accepted where only weights are needed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from nasdeploy.errors import CheckpointError
from nasdeploy.utils.files import atomic_path

CHECKPOINT_FORMAT = "nasdeploy.checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | os.PathLike[str], model_state: dict[str, Any], *, kind: str,
                    meta: dict[str, Any] | None = None, **extra: Any) -> Path:
    """Atomically write a nasdeploy checkpoint (loadable with weights_only=True)."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "kind": kind,
               "model": model_state, "meta": meta or {}, **extra}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with weights_only=True; plain state_dicts come back as {"model": sd, "meta": {}}."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        data = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {p}: {first}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {p} holds a {type(data).__name__}, expected a dict")
    if data.get("format") == CHECKPOINT_FORMAT:
        if data.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(f"checkpoint {p} has version {data.get('version')!r}; expected {CHECKPOINT_VERSION}")
        return data
    state = data.get("state_dict", data)
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"checkpoint {p} is neither a nasdeploy checkpoint nor a state_dict")
    return {"format": "state_dict", "kind": "weights", "model": state, "meta": {}}


def load_weights_into(model: torch.nn.Module, checkpoint: dict[str, Any], source: str = "checkpoint") -> None:
    """load_state_dict(strict=True) with a one-line error listing the first mismatches."""
    state = checkpoint["model"]
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shape:
            k = shape[0]
            parts.append(f"{len(shape)} with wrong shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
