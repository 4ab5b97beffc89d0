"""Folders the tool made carry a mark; a folder without it is never written into, cleared or replaced.

The mark is a small JSON file, `.nasdeploy`, naming the folder's kind (run directory, export folder, Triton
repository, pipeline run). Every command that writes a folder claims it first: a missing or empty folder is
marked as its own, a marked one of the same kind is reused, anything else is refused in one line whatever
--force / --overwrite say. --force then clears only the files the command itself writes.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Iterable, Literal

from nasdeploy._version import __version__
from nasdeploy.errors import ConfigError
from nasdeploy.utils.files import process_start_time, write_json_atomic
from nasdeploy.utils.limits import loads_json

MARK_NAME = ".nasdeploy"
MARK_FORMAT = "nasdeploy.folder"
MARK_VERSION = 1
FolderKind = Literal["run", "export", "triton", "pipeline", "selection"]
FOLDER_KINDS: tuple[str, ...] = ("run", "export", "triton", "pipeline", "selection")
_KIND_NAMES = {"run": "a run directory", "export": "an export folder", "triton": "a Triton model repository",
               "pipeline": "a pipeline run directory", "selection": "a selection over several seeds"}
# Entries a folder may hold and still count as empty: the run lock, which the lock leaves behind by design.
_HARMLESS = (".lock",)
_MARK_BYTES = 4096


def _check_kind(kind: str) -> None:
    if kind not in FOLDER_KINDS:
        raise ValueError(f"unknown folder kind {kind!r}; one of {', '.join(FOLDER_KINDS)}")


def mark_folder(folder: str | os.PathLike[str], kind: FolderKind) -> Path:
    """Write the mark of `kind` into `folder` (atomically); returns the mark's path."""
    _check_kind(kind)
    return write_json_atomic(Path(folder) / MARK_NAME, {"format": MARK_FORMAT, "kind": kind, "version": MARK_VERSION,
                                                        "nasdeploy": __version__})


def folder_kind(folder: str | os.PathLike[str]) -> str | None:
    """The kind a folder's mark names, or None when it has no valid mark (a link in its place is no mark)."""
    try:
        fd = os.open(Path(folder) / MARK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        record = loads_json(os.read(fd, _MARK_BYTES).decode("utf-8"), MARK_NAME)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    if not isinstance(record, dict) or record.get("format") != MARK_FORMAT or record.get("kind") not in FOLDER_KINDS:
        return None
    return record["kind"]


def _is_empty(folder: Path) -> bool:
    return all(entry.name in _HARMLESS for entry in os.scandir(folder))


def check_folder(folder: str | os.PathLike[str], kind: FolderKind, option: str = "--out") -> bool:
    """Whether `folder` may be written as `kind`: absent or empty (False: not marked yet) or marked so (True).

    Anything else (a file, a folder of other content, a folder of another kind) is a one-line ConfigError,
    whatever --force or --overwrite say.
    """
    _check_kind(kind)
    path = Path(folder)
    if not path.exists() and not path.is_symlink():
        return False
    if not path.is_dir():
        raise ConfigError(f"{option} {path} exists and is not a folder; choose another {option}")
    found = folder_kind(path)
    if found == kind:
        return True
    if found is not None:
        raise ConfigError(f"{option} {path} is {_KIND_NAMES[found]}, not {_KIND_NAMES[kind]}; choose another {option}")
    if _is_empty(path):
        return False
    raise ConfigError(f"{option} {path} is a folder nasdeploy did not make (no {MARK_NAME} mark) and it is not "
                      f"empty; nothing in it is touched: choose another {option} or empty it")


def claim_folder(folder: str | os.PathLike[str], kind: FolderKind, option: str = "--out") -> Path:
    """Create or reuse `folder` as `kind` after check_folder, marking it; returns the folder."""
    path = Path(folder)
    if not check_folder(path, kind, option):
        path.mkdir(parents=True, exist_ok=True)
        mark_folder(path, kind)
    return path


def clear_own_entries(folder: str | os.PathLike[str], kind: FolderKind, names: Iterable[str]) -> list[Path]:
    """--force: remove the named entries (the command's own outputs) of a folder marked `kind`, nothing else.

    A link among them is removed itself, never followed; returns what was removed.
    """
    path = Path(folder)
    if folder_kind(path) != kind:
        raise ConfigError(f"{path} does not carry the {MARK_NAME} mark of {_KIND_NAMES[kind]}; nothing is cleared")
    removed = []
    for name in names:
        if Path(name).name != name or name in ("", ".", "..", MARK_NAME):
            raise ValueError(f"clear_own_entries takes plain entry names, got {name!r}")
        entry = path / name
        if entry.is_symlink() or entry.is_file():
            entry.unlink()
        elif entry.is_dir():
            shutil.rmtree(entry)  # refuses to start on a link; links inside are removed, not followed
        else:
            continue
        removed.append(entry)
    return removed


def staging_pattern(target_name: str, tag: str = "partial") -> re.Pattern[str]:
    """The names of staging folders `tempfile.mkdtemp(prefix=f".{target_name}.{tag}-")` makes (8 random characters)."""
    return re.compile(rf"^\.{re.escape(target_name)}\.{re.escape(tag)}-[a-z0-9_]{{8}}$")


def remove_stale_staging(parent: str | os.PathLike[str], target_name: str, kind: FolderKind,
                         tag: str = "partial") -> list[Path]:
    """Delete staging folders a killed run left next to `parent/target_name`; returns what went.

    Only real folders (not links) named as staging_pattern says, last changed before this process started, and
    either empty or carrying the mark of `kind` are removed: never a staging folder of a run still going.
    """
    folder = Path(parent)
    if not folder.is_dir():
        return []
    pattern, started = staging_pattern(target_name, tag), process_start_time()
    removed = []
    for entry in os.scandir(folder):
        if not pattern.match(entry.name):
            continue
        with contextlib.suppress(FileNotFoundError):
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISDIR(info.st_mode) or info.st_mtime >= started:
                continue
            path = Path(entry.path)
            if folder_kind(path) == kind or _is_empty(path):
                shutil.rmtree(path)
                removed.append(path)
    return removed


def report_path(target: str | os.PathLike[str], report: str | os.PathLike[str]) -> str:
    """`target` as the report file `report` should name it: relative to the report's folder, both resolved.

    Call it for the published paths (or for paths inside a staging folder that is renamed whole, with the
    report inside it or next to it: the relative path stays true after the rename).
    """
    return os.path.relpath(Path(target).resolve(), Path(report).resolve().parent)
