"""Run directories: finished markers, --force resets, and resume compatibility of configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable

from nasdeploy.errors import ConfigError
from nasdeploy.utils.yamlconfig import diff_dicts


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, or None when it is missing or torn."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def clear_run_files(out_dir: Path, names: Iterable[str]) -> None:
    """Remove a run's own files and folders (and nothing else) before a forced redo."""
    for name in names:
        p = out_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def check_resume_config(stored: dict[str, Any], current: dict[str, Any], out_dir: Path,
                        allowed: Iterable[str]) -> None:
    """Refuse to continue a run with a config that would change its result."""
    changed = [k for k in diff_dicts(stored, current) if k not in set(allowed)]
    if changed:
        k = changed[0]
        a, b = _get(stored, k), _get(current, k)
        raise ConfigError(
            f"{out_dir} holds a run with a different config ({len(changed)} key(s), e.g. {k}: {a!r} there vs {b!r} now); "
            f"use the same config to resume, --force to start over, or another --out"
        )


def _get(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data
