"""Run logs: JSON-lines files plus one console line per record (tqdm-safe), written by rank 0 only."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from nasdeploy.errors import LimitError
from nasdeploy.utils.files import write_text_atomic
from nasdeploy.utils.limits import JSON_BYTES, loads_json, read_text_limited


class JsonlLog:
    """Append-only JSON-lines file of per-epoch records; rewound on resume so no epoch appears twice."""

    def __init__(self, path: str | os.PathLike[str], enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def rewind(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Atomically drop the records `keep` rejects (and any torn last line)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [line for line, record in self._records() if keep(record)]
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        """Append one record and flush it to disk."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict[str, Any]]:
        """Every complete record."""
        return [record for _, record in self._records()] if self.path.is_file() else []

    def _records(self) -> list[tuple[str, dict[str, Any]]]:
        """(line, record) of every complete record: the file within the size limit, each line within the nesting
        limit (LimitError), a torn or foreign line skipped."""
        out = []
        for line in read_text_limited(self.path, JSON_BYTES, "run log").splitlines():
            try:
                record = loads_json(line, f"run log {self.path}")
            except LimitError:
                raise
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append((line, record))
        return out


def console(message: str, enabled: bool = True) -> None:
    """Print a line without breaking an active tqdm bar."""
    if enabled:
        tqdm.write(message)


def format_metrics(record: dict[str, Any], keys: tuple[str, ...]) -> str:
    """'key value' pairs for the console: floats to 4 significant digits."""
    parts = []
    for key in keys:
        if key in record and record[key] is not None:
            value = record[key]
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return "  ".join(parts)
