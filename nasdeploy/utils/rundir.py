"""Run directories: finished markers, --force resets, and resume compatibility of configs."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterable, Iterator

from nasdeploy.errors import ConfigError, LimitError
from nasdeploy.utils.limits import read_json_limited
from nasdeploy.utils.yamlconfig import diff_dicts


# One layout for every search and training run directory: the config it ran with and its finished marker.
CONFIG_FILE = "config.yaml"
DONE_FILE = "done.json"


@contextlib.contextmanager
def open_run_directory(out: Path, run_files: Iterable[str], *, main: bool = True) -> Iterator[Path]:
    """Hold the run directory's lock for the block (main rank only) and clear temp files a killed write left."""
    from nasdeploy.utils.files import remove_stale_temp_files
    from nasdeploy.utils.runlock import run_directory_lock

    with run_directory_lock(out, enabled=main):
        if main:
            for name in run_files:
                remove_stale_temp_files(out, name)
        yield out


def run_config_file(out: Path) -> Path | None:
    """The config.yaml a run directory stored, or None."""
    path = out / CONFIG_FILE
    return path if path.is_file() else None


def write_run_config(out: Path, config: Any, space: str) -> Path:
    """Write the run's config.yaml atomically, headed by the name of its search space (so it can be rerun alone)."""
    from nasdeploy.utils.files import write_text_atomic
    from nasdeploy.utils.yamlconfig import dump_yaml, to_dict

    return write_text_atomic(out / CONFIG_FILE, dump_yaml({"space": space, **to_dict(config)}))


def read_run_config(out: Path) -> dict[str, Any]:
    """The stored config.yaml of a run without its `space:` key ({} when there is none)."""
    from nasdeploy.utils.yamlconfig import load_yaml

    path = out / CONFIG_FILE
    data = load_yaml(path) if path.is_file() else {}
    return {k: v for k, v in data.items() if k != "space"}


def read_done(out: Path) -> dict[str, Any] | None:
    """The finished marker's record of a run directory, or None while the run is not finished."""
    record = read_json(out / DONE_FILE)
    return record if record is not None and record.get("finished", True) else None


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, or None when it is missing or torn (one over the size or nesting limit: LimitError)."""
    try:
        data = read_json_limited(path, "run record")
    except LimitError:
        raise
    except (OSError, ValueError):  # missing, or torn by a killed write (JSONDecodeError, UnicodeDecodeError)
        return None
    return data if isinstance(data, dict) else None


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
