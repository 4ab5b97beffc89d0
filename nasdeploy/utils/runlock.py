"""One process per run directory: an exclusive flock on `<run_dir>/.lock`, gone when its holder exits or dies."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shlex
import stat
import sys
from pathlib import Path
from typing import Iterator

from nasdeploy.errors import ConfigError
from nasdeploy.utils.limits import loads_json

LOCK_NAME = ".lock"


def _command_line() -> str:
    """This process's command line as the shell would show it, on one line (first 300 characters)."""
    try:
        args = [a.decode(errors="replace") for a in Path("/proc/self/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        args = [sys.executable, *sys.argv]
    return re.sub(r"\s+", " ", shlex.join(args)).strip()[:300]


def _holder(fd: int) -> str:
    """'process PID (command)' of the lock's holder, as it wrote it into the lock file."""
    try:
        info = loads_json(os.pread(fd, 4096, 0).decode() or "{}", "run lock")
        return f"process {int(info['pid'])} ({info.get('command', '?')})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not written its PID yet)"


def _open_lock_file(lock_path: Path) -> int:
    """Open (or create) the lock file itself: never through a symbolic link, never a file with other names.

    The lock is truncated and written, so a planted link (symbolic or hard) would make that hit its target.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(lock_path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"{lock_path} is a symbolic link; refusing to follow it (remove it if the run "
                              f"directory is yours)") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        what = "has other names (hard links)" if stat.S_ISREG(info.st_mode) else "is not a regular file"
        raise ConfigError(f"{lock_path} {what}; refusing to use it as the run lock (remove it if the run "
                          f"directory is yours)")
    return fd


@contextlib.contextmanager
def run_directory_lock(path: str | os.PathLike[str], *, enabled: bool = True) -> Iterator[Path | None]:
    """Hold `<path>/.lock` for the block, or raise ConfigError naming the process that holds it.

    Non-blocking; the kernel drops the lock when the process ends, crash or kill -9 included. Under
    torchrun pass enabled=(rank == 0) so only the main rank locks. Yields the lock file (None if disabled).
    """
    if not enabled:
        yield None
        return
    import fcntl

    run_dir = Path(path)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_path = run_dir / LOCK_NAME
    fd = _open_lock_file(lock_path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"run directory {run_dir} is in use by {_holder(fd)}; wait for it or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": _command_line()}).encode() + b"\n", 0)
        try:
            yield lock_path
        finally:
            os.ftruncate(fd, 0)  # the file stays (removing it would race with the next locker); it names no one
    finally:
        os.close(fd)  # releases the flock
        if created and [p.name for p in run_dir.iterdir()] == [LOCK_NAME]:
            # A run that was refused before writing anything leaves no directory behind.
            lock_path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                run_dir.rmdir()
