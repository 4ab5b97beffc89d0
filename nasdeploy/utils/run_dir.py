"""Run-directory helpers shared by the loops: same-config check on resume, device choice."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
import yaml

from nasdeploy.errors import ConfigError


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: data}


def check_same_config(stored_path: str | os.PathLike[str], config: dict[str, Any], ignore: Iterable[str] = ()) -> None:
    """Raise if a run directory holds a run with another config (keys in `ignore` may differ)."""
    p = Path(stored_path)
    if not p.is_file():
        return
    stored = _flatten(yaml.safe_load(p.read_text(encoding="utf-8")) or {})
    new = _flatten(config)
    skip = set(ignore)
    for key in sorted(set(stored) | set(new)):
        if key in skip:
            continue
        if stored.get(key) != new.get(key):
            raise ConfigError(
                f"{p.parent} holds a run with {key}={stored.get(key)!r}, not {new.get(key)!r}; "
                f"use another output folder or force to start over"
            )


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available else cpu; 'cuda' without a GPU is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA device is available")
    return torch.device(name)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Use `threads` torch CPU threads inside the block (None: leave as is), then restore."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
