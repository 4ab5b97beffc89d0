"""Atomic file writes: write to a temporary file in the same folder, then rename."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

_MODULE_LOADED = time.time()  # fallback start time where /proc is missing (set once, never changed)


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


def _make_temp(target: Path) -> tuple[int, Path]:
    """An open, new, empty temp file next to `target` (mode 0600)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp opens with O_CREAT | O_EXCL | O_NOFOLLOW: never an existing file, never through a planted link.
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _cannot_write(exc, target) from None
    return fd, Path(tmp)


def _publish(tmp_path: Path, target: Path) -> None:
    """Give the finished temp file the usual mode, flush it and rename it onto `target`.

    The temp file is reopened without following links: one put in its place (by a library or anyone else)
    is refused, never written through or chmod-ed.
    """
    try:
        fd = os.open(tmp_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise OSError(errno.ELOOP, "refusing to publish a temporary file replaced by a symbolic link",
                      str(tmp_path)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "refusing to publish a temporary file replaced by a non-file", str(tmp_path))
        # mkstemp creates 0600 files; artifacts get the usual permissions (0666 less the umask).
        os.fchmod(fd, 0o666 & ~_umask())
        os.fsync(fd)  # the data is on disk before the name points at it
    finally:
        os.close(fd)
    os.replace(tmp_path, target)
    _fsync_path(target.parent)  # and the rename itself survives a crash


def _discard(tmp_path: Path) -> None:
    """Remove a temp file that was not published (a link in its place is removed, its target untouched)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp_path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    target = Path(path)
    fd, tmp_path = _make_temp(target)
    os.close(fd)
    try:
        yield tmp_path
        _publish(tmp_path, target)
    finally:
        _discard(tmp_path)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fsync_path(path: Path) -> None:
    """fsync a file or folder by path (folders: where the file system allows it)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if not path.is_dir() or exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def set_default_permissions(folder: str | os.PathLike[str]) -> None:
    """Give a staged folder tree the permissions of ordinary mkdir/open, less the umask: folders and files the
    owner may execute (scripts) 0777 -> 0755, other files 0666 -> 0644 (mkdtemp/mkstemp made them 0700/0600)."""
    umask = _umask()
    root = Path(folder)
    os.chmod(root, 0o777 & ~umask)
    for base, dirs, files in os.walk(root):  # os.walk does not enter symlinked folders
        for name in dirs + files:
            path = os.path.join(base, name)
            if os.path.islink(path):
                continue
            executable = os.path.isdir(path) or os.stat(path).st_mode & stat.S_IXUSR
            os.chmod(path, (0o777 if executable else 0o666) & ~umask)


def process_start_time() -> float:
    """When this process started (seconds since the epoch); on systems without /proc, when this module loaded."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat(5): start time in clock ticks after boot
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        # btime is whole seconds (rounded down), so this errs early; never later than this module's import.
        return min(boot + ticks / os.sysconf("SC_CLK_TCK"), _MODULE_LOADED)
    except (OSError, ValueError, IndexError, StopIteration):
        return _MODULE_LOADED


def temp_file_pattern(target_name: str) -> re.Pattern[str]:
    """The names atomic_path gives its temporary files for `target_name` (mkstemp: 8 random characters)."""
    return re.compile(rf"^\.{re.escape(target_name)}\.[a-z0-9_]{{8}}\.tmp$")


def remove_stale_temp_files(directory: str | os.PathLike[str], target_name: str) -> list[Path]:
    """Delete the temp files an interrupted atomic write of `directory/target_name` left; returns what went.

    Only regular files named exactly as atomic_path names them and last modified before this process
    started are removed: nothing else, and never a temp file of a write this process is making.
    """
    folder = Path(directory)
    if not folder.is_dir():
        return []
    pattern, started = temp_file_pattern(target_name), process_start_time()
    removed = []
    for entry in os.scandir(folder):
        if not pattern.match(entry.name):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(info.st_mode) and info.st_mtime < started:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write text to `path` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write bytes to `path` atomically, through the temp file's own descriptor (never reopened by name)."""
    target = Path(path)
    fd, tmp_path = _make_temp(target)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _publish(tmp_path, target)
    finally:
        _discard(tmp_path)
    return target


def write_json_atomic(path: str | os.PathLike[str], obj: Any, indent: int = 2) -> Path:
    """Write `obj` as JSON to `path` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")
