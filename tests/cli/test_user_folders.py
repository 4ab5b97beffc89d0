"""Own only what you made: every writing command pointed at a folder it did not make leaves it as it was; a killed
export's leftovers go with the next export; reports name the published files, relative to themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import CONFIGS, REPO, run_cli, tree_snapshot

from nasdeploy.utils import ownership

DEMO_SEARCH = str(CONFIGS / "darts_cnn_demo_search.yaml")
DEMO_TRAIN = str(CONFIGS / "darts_cnn_demo_train.yaml")
TINY_NET = ["--net", "cifar", "--channels", "4", "--layers", "3"]

# Every command that writes a folder or file, pointed at the user's folder `mine` (with --force / --overwrite too).
WRITERS: dict[str, list[str]] = {
    "search": ["search", "--config", DEMO_SEARCH, "--out", "mine", "--no-progress"],
    "search --force": ["search", "--config", DEMO_SEARCH, "--out", "mine", "--force", "--no-progress"],
    "search --out alone": ["search", "--out", "mine", "--no-progress"],
    "train": ["train", "--genotype", "DARTS_V2", "--config", DEMO_TRAIN, "--out", "mine", "--no-progress"],
    "train --force": ["train", "--genotype", "DARTS_V2", "--config", DEMO_TRAIN, "--out", "mine", "--force",
                      "--no-progress"],
    "pipeline": ["pipeline", "--out", "mine", "--quiet"],
    "export": ["export", "DARTS_V2", *TINY_NET, "--out", "mine"],
    "export --overwrite": ["export", "DARTS_V2", *TINY_NET, "--out", "mine", "--overwrite"],
    "export triton --overwrite": ["export", "DARTS_V2", *TINY_NET, "--format", "triton", "--out", "mine",
                                  "--overwrite"],
    "profile --json": ["profile", "DARTS_V2", *TINY_NET, "--json", "mine"],
    "profile --markdown": ["profile", "DARTS_V2", *TINY_NET, "--markdown", "mine"],
    "genotypes draw -o": ["genotypes", "draw", "DARTS_V2", "-o", "mine"],
}


def _user_folder(root: Path) -> Path:
    """The user's own folder: nested files with the names the tool would write there."""
    mine = root / "mine"
    (mine / "search").mkdir(parents=True)
    (mine / "search" / "checkpoint.pt").write_text("the user's")
    (mine / "notes").mkdir()
    (mine / "notes" / "todo.txt").write_text("keep me")
    for name in ("done.json", "log.jsonl", "model.onnx", "export.json", "genotype.json"):
        (mine / name).write_text("the user's " + name)
    # A config the user keeps there: `search --out mine` alone would run it (a run directory's config.yaml).
    (mine / "config.yaml").write_text(Path(DEMO_SEARCH).read_text())
    return mine


@pytest.mark.parametrize("command", list(WRITERS))
def test_a_writing_command_leaves_a_folder_it_did_not_make_as_it_was(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _user_folder(tmp_path)
    before = tree_snapshot(tmp_path)
    code, _, err = run_cli(WRITERS[command], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err, (command, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: ") and "mine" in lines[0], (command, err[-2000:])
    assert tree_snapshot(tmp_path) == before, command


def test_an_export_folder_it_made_is_replaced_with_overwrite_and_only_then(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["export", "DARTS_V2", *TINY_NET, "--out", "exp", "--seed", "0"]
    assert run_cli(argv, capsys)[0] == 0
    (tmp_path / "exp" / "stale.txt").write_text("from the first export")
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "already exists" in err
    assert run_cli([*argv, "--overwrite"], capsys)[0] == 0
    assert not (tmp_path / "exp" / "stale.txt").exists() and (tmp_path / "exp" / "model.onnx").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # no staging or trash folder left


KILLED_EXPORT = textwrap.dedent("""
    import os, re, signal, sys
    def hook(event, args):  # SIGKILL the moment the export writes its first file into the staging folder
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            if re.search(r"/\\.exp\\.partial-[a-z0-9_]{8}/model\\.onnx", os.path.abspath(os.fsdecode(args[0]))):
                os.kill(os.getpid(), signal.SIGKILL)
    sys.addaudithook(hook)
    from nasdeploy.cli.main import main
    main(sys.argv[1:])
""")


def test_a_killed_exports_staging_folder_is_cleared_by_the_next_export(tmp_path, monkeypatch, capsys):
    argv = ["export", "DARTS_V2", *TINY_NET, "--out", "exp", "--seed", "0"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILLED_EXPORT, *argv], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and ownership.staging_pattern("exp").match(leftovers[0]), leftovers
    # The next export runs in a process started after the killed one, as a rerun does (this test's process started
    # before it: a staging folder changed after a process started may be that process's own, and is kept).
    monkeypatch.setattr(ownership, "process_start_time", lambda: float("inf"))
    monkeypatch.chdir(tmp_path)
    assert run_cli(argv, capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]


def _paths_in(report: dict) -> list[str]:
    """The path values of an export or parity report: out_dir, files, the parity reports' model, the source's files."""
    paths = [report["out_dir"], *report["files"].values()] if "files" in report else []
    paths += [r["model_path"] for r in report.get("parity", {}).values()]
    paths += [report["model_path"]] if "model_path" in report else []
    source = report.get("source", {})
    paths += [source[key] for key in ("checkpoint", "target") if source.get(key)]
    return paths


def test_reports_name_the_published_files_relative_to_themselves(tmp_path, monkeypatch, capsys):
    import torch

    from nasdeploy.genotypes import genotype_to_dict, get_genotype
    from nasdeploy.nets import build_network
    from nasdeploy.utils.checkpoint import save_checkpoint

    monkeypatch.chdir(tmp_path)
    sizes = {"channels": 4, "layers": 3, "num_classes": 10}
    model = build_network("DARTS_V2", "cifar", auxiliary=False, **sizes)
    save_checkpoint("ckpt.pt", model.state_dict(), kind="train",
                    meta={"genotype": genotype_to_dict(get_genotype("DARTS_V2")), "net": "cifar", "net_kwargs": sizes})
    torch.manual_seed(0)
    code, _, err = run_cli(["export", "ckpt.pt", "--format", "triton", "--out", "out/exp", "--seed", "0"], capsys)
    assert code == 0, err
    reports = sorted((tmp_path / "out" / "exp").glob("*.json"))
    assert [p.name for p in reports] == ["export.json", "parity_onnx.json"]
    for report in reports:
        paths = _paths_in(json.loads(report.read_text()))
        assert paths, report
        for path in paths:
            assert not Path(path).is_absolute() and ".partial-" not in path, (report.name, path)
            assert (report.parent / path).exists(), (report.name, path)
    source = json.loads(reports[0].read_text())["source"]
    assert source["checkpoint"] == source["target"] == os.path.join("..", "..", "ckpt.pt")
