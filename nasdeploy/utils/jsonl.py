"""JSON-lines logs: one JSON object per line, appended and flushed (readable while a run goes on)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one record as a line and flush it to disk."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a JSON-lines file (an absent file has none; a torn last line is skipped)."""
    p = Path(path)
    if not p.is_file():
        return []
    records = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_jsonl(path: str | os.PathLike[str], keep: int) -> None:
    """Keep only records whose 'epoch' is <= keep (a resumed run rewrites what came after its checkpoint)."""
    from nasdeploy.utils.files import write_text_atomic

    p = Path(path)
    if p.is_file():
        kept = [r for r in read_jsonl(p) if int(r.get("epoch", 0)) <= keep]
        write_text_atomic(p, "".join(json.dumps(r) + "\n" for r in kept))
