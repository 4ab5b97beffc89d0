"""Atomic writes: fsync before and after the rename; temp files of killed writes are removed on resume, nothing else."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nasdeploy.utils import files
from nasdeploy.utils.checkpoint import load_checkpoint, save_checkpoint
from nasdeploy.utils.files import atomic_path, process_start_time, remove_stale_temp_files, write_text_atomic

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, **kwargs)


def _leave_temp_file_by_kill(folder: Path, name: str) -> Path:
    """A real interrupted write: a process killed (SIGKILL) inside atomic_path, half-way through its data."""
    proc = _python(f"""
        import sys, time, torch
        from nasdeploy.utils.files import atomic_path
        with atomic_path({str(folder / name)!r}) as tmp:
            tmp.write_bytes(b"half a checkpoint")
            print(tmp, flush=True)
            time.sleep(60)
    """)
    tmp = Path(proc.stdout.readline().strip())
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert tmp.is_file() and not (folder / name).exists()
    return tmp


def test_killed_write_leaves_a_temp_file_that_a_resuming_process_removes(tmp_path):
    leftover = _leave_temp_file_by_kill(tmp_path, "checkpoint.pt")
    assert files.temp_file_pattern("checkpoint.pt").match(leftover.name)
    # Not ours or not matching exactly: kept.
    keep = [tmp_path / "checkpoint.pt", tmp_path / ".checkpoint.pt.abc.tmp", tmp_path / ".checkpoint.pt.abcdefgh.tmp.bak",
            tmp_path / ".best.pt.abcdefgh.tmp", tmp_path / "checkpoint.pt.abcdefgh.tmp", tmp_path / ".checkpoint.pt.ABCDEFGH.tmp"]
    for path in keep:
        path.write_text("keep")
    (tmp_path / ".checkpoint.pt.dirdirdi.tmp").mkdir()
    target = tmp_path / "precious"
    target.write_text("keep")
    (tmp_path / ".checkpoint.pt.linklink.tmp").symlink_to(target)
    old = time.time() - 3600
    for path in keep + [tmp_path / ".checkpoint.pt.dirdirdi.tmp", leftover]:
        os.utime(path, (old, old))

    # The test process started before the killed writer: for it the temp file might be a write in flight.
    os.utime(leftover, None)
    assert remove_stale_temp_files(tmp_path, "checkpoint.pt") == []
    assert leftover.exists()

    time.sleep(1.2)  # the start time from /proc errs early by up to a second (boot time in whole seconds)
    resumed = _python(f"""
        from nasdeploy.utils.files import remove_stale_temp_files
        print([p.name for p in remove_stale_temp_files({str(tmp_path)!r}, "checkpoint.pt")])
    """)
    out, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0
    assert out.strip() == repr([leftover.name])
    assert not leftover.exists()
    assert all(p.exists() for p in keep) and target.read_text() == "keep"
    assert (tmp_path / ".checkpoint.pt.dirdirdi.tmp").is_dir() and (tmp_path / ".checkpoint.pt.linklink.tmp").is_symlink()


def test_own_write_in_flight_is_never_removed(tmp_path):
    with atomic_path(tmp_path / "checkpoint.pt") as tmp:
        tmp.write_bytes(b"x")
        assert remove_stale_temp_files(tmp_path, "checkpoint.pt") == []
        assert tmp.exists()
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"x"
    assert remove_stale_temp_files(tmp_path / "missing", "checkpoint.pt") == []


def test_process_start_time_is_before_now_and_not_in_the_future():
    started = process_start_time()
    assert started <= files._MODULE_LOADED <= time.time()
    assert time.time() - started < 24 * 3600


def test_fsync_of_data_before_rename_and_of_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(tmp_path / "checkpoint.pt", {}, kind="train", meta={"epoch": 1})
    assert load_checkpoint(tmp_path / "checkpoint.pt")["meta"] == {"epoch": 1}
    assert len(events) == 3, events
    (k0, p0), (k1, p1), (k2, p2) = events
    assert k0 == "fsync" and Path(p0).name.startswith(".checkpoint.pt.") and p0.endswith(".tmp")
    assert (k1, p1) == ("replace", str(tmp_path / "checkpoint.pt"))
    assert (k2, p2) == ("fsync", str(tmp_path))


def test_atomic_write_still_gives_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
