"""Atomic file writes: write to a temporary file in the same folder, then rename."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def file_in_the_way(path: str | os.PathLike[str]) -> Path | None:
    """The closest existing ancestor of `path` (itself included) that is not a folder, if any."""
    for candidate in (Path(path), *Path(path).parents):
        if candidate.is_symlink() or candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def describe_os_error(exc: OSError) -> str:
    """One line `<what> (<path>)` for a failed file operation (what the CLI prints after 'error: ')."""
    what = (exc.strerror or str(exc) or type(exc).__name__).strip().splitlines()[0]
    what = what[:1].lower() + what[1:] if what[1:2].islower() else what
    if exc.filename is None:
        return what
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        blocker = file_in_the_way(exc.filename)
        if blocker is not None:  # mkdir met a file where a folder of the path should be
            return f"a file is in the way of a folder ({blocker})"
    if exc.filename2 is not None:
        return f"{what} ({exc.filename} -> {exc.filename2})"
    return f"{what} ({exc.filename})"


def _cannot_write(exc: OSError, target: Path) -> OSError:
    """The OSError of a failed write, naming the file asked for (not our temp file) and what is in the way."""
    blocker = file_in_the_way(target.parent)
    reason = f"{blocker} is a file, not a folder" if blocker is not None else describe_os_error(
        type(exc)(exc.errno, exc.strerror))
    return type(exc)(exc.errno, f"cannot write file: {reason}", str(target))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _cannot_write(exc, target) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; artifacts get the usual permissions (0666 less the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write text to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write bytes to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, indent: int = 2) -> Path:
    """Write `obj` as JSON to `path` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")
