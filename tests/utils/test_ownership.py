"""Folder marks: a folder is written, cleared or replaced only when nasdeploy made it (its .nasdeploy mark)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from nasdeploy.errors import ConfigError
from nasdeploy.utils.ownership import (
    MARK_NAME, check_folder, claim_folder, clear_own_entries, folder_kind, mark_folder, remove_stale_staging,
    report_path,
)


def test_folders_are_claimed_only_when_absent_empty_or_marked_the_same(tmp_path):
    assert claim_folder(tmp_path / "new", "run") == tmp_path / "new" and folder_kind(tmp_path / "new") == "run"
    assert check_folder(tmp_path / "new", "run") is True
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".lock").write_text("")
    assert check_folder(tmp_path / "empty", "export") is False
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / MARK_NAME).symlink_to(tmp_path / "new" / MARK_NAME)  # a linked mark is no mark
    for folder, kind, word in [("mine", "run", "did not make"), ("new", "export", "is a run directory"),
                               ("afile", "run", "not a folder"), ("fake", "run", "did not make")]:
        with pytest.raises(ConfigError, match=word):
            claim_folder(tmp_path / folder, kind)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me" and not (tmp_path / "mine" / MARK_NAME).exists()


def test_force_clears_only_the_commands_own_entries_and_never_follows_links(tmp_path):
    run = claim_folder(tmp_path / "run", "run")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep.txt").write_text("keep me")
    (run / "checkpoint.pt").write_text("x")
    (run / "notes.txt").write_text("user's")
    (run / "search").symlink_to(tmp_path / "outside")
    removed = clear_own_entries(run, "run", ["checkpoint.pt", "search", "log.jsonl"])
    assert [p.name for p in removed] == ["checkpoint.pt", "search"]
    assert sorted(p.name for p in run.iterdir()) == [MARK_NAME, "notes.txt"]
    assert (tmp_path / "outside" / "keep.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="nothing is cleared"):
        clear_own_entries(tmp_path / "outside", "run", ["keep.txt"])


def test_stale_staging_folders_of_a_killed_run_are_removed_and_nothing_else(tmp_path):
    old = time.time() - 3600
    stale = tmp_path / ".exp.partial-abcd1234"
    mark_folder(stale, "export")
    empty = tmp_path / ".exp.partial-efgh5678"
    empty.mkdir()
    foreign = tmp_path / ".exp.partial-ijkl9012"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    other = tmp_path / ".exp.partial-xyz"
    other.mkdir()
    link = tmp_path / ".exp.partial-link1234"
    link.symlink_to(foreign)
    for path in (stale, empty, foreign, other):
        os.utime(path, (old, old))
    fresh = tmp_path / ".exp.partial-new12345"  # a staging folder of a run going on now
    mark_folder(fresh, "export")
    assert sorted(p.name for p in remove_stale_staging(tmp_path, "exp", "export")) == sorted([empty.name, stale.name])
    assert foreign.is_dir() and other.is_dir() and link.is_symlink() and fresh.is_dir()


def test_report_paths_are_relative_to_the_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert report_path("out/model.onnx", "out/export.json") == "model.onnx"
    assert report_path(tmp_path / "ckpt.pt", Path("out/reports/parity.json")) == os.path.join("..", "..", "ckpt.pt")
