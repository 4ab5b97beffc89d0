"""The table of search spaces is the one place that knows which spaces exist."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from nasdeploy.cli.main import main
from nasdeploy.errors import ConfigError
from nasdeploy.spaces import table
from nasdeploy.spaces.table import SPACES, get_space, resolve
from nasdeploy.utils.yamlconfig import dump_yaml

PACKAGE = Path(__file__).resolve().parents[2] / "nasdeploy"
NAMES = tuple(SPACES)
# Comparisons of a space name, and the helpers that once dispatched on it.
DISPATCH = re.compile(r"""[=!]=\s*["'](%s)["']|["'](%s)["']\s*[=!]=|is_recurrent_pipeline|stages_for\(["']"""
                      % ("|".join(NAMES), "|".join(NAMES)))


def test_no_space_dispatch_outside_the_table():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "spaces" / "table.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if DISPATCH.search(line):
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("name", NAMES)
def test_every_reference_of_every_space_resolves(name):
    space = get_space(name)
    for part in ("search_config", "search_loop", "train_config", "train_loop", "derive", "network", "pipeline",
                 "export_section", "profile_section"):
        assert resolve(getattr(space, part)) is not None, part
    if space.selection:  # the rules of `nasdeploy search --seeds` (empty: not supported for the space yet)
        from nasdeploy.config.selection import SelectionRules

        assert isinstance(space.load("selection"), SelectionRules)
    stages = space.pipeline_stages()
    assert list(stages.stages()) == ["search", "derive", "train", "export", "executorch", "quantize", "profile"]
    assert callable(stages.report_figures) and callable(stages.reproduce_commands)


def test_the_six_loops_speak_one_vocabulary():
    import inspect

    for space in SPACES.values():
        for part, positional in (("search_loop", ["config", "out_dir"]), ("train_loop", ["config", "genotype", "out_dir"])):
            loop = inspect.unwrap(space.load(part))
            params = inspect.signature(loop).parameters
            assert [p for p, v in params.items() if v.kind is v.POSITIONAL_OR_KEYWORD] == positional, (space.name, part)
            keywords = {p for p, v in params.items() if v.kind is v.KEYWORD_ONLY}
            assert {"data_dir", "force", "stop_after_epoch", "progress"} <= keywords, (space.name, part)


def test_importing_the_table_loads_no_torch_and_no_search_code():
    code = ("import sys, nasdeploy.spaces.table as t; t.get_space('autodeeplab'); "
            "print(any(m == 'torch' or m.startswith('nasdeploy.search') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_unknown_space_is_one_line():
    with pytest.raises(ConfigError, match=r"unknown search space 'toy' \(known: darts_cnn, darts_rnn, autodeeplab\)"):
        get_space("toy")


def test_a_fourth_space_added_to_the_table_runs_through_the_pipeline(tmp_path, monkeypatch, capsys):
    toy = replace(get_space("darts_cnn"), name="toy", title="toy space", search_config="toy_space:ToyConfig",
                  train_config="toy_space:ToyConfig", pipeline="toy_space:ToyStages", profile_nets=())
    monkeypatch.setitem(table.SPACES, "toy", toy)
    config = tmp_path / "toy.yaml"
    config.write_text(dump_yaml({"name": "toy", "space": "toy", "search": {"steps": 2}, "train": {"steps": 1}}))
    run_dir = tmp_path / "run"

    def run(*args: str) -> None:
        try:
            main(["pipeline", str(config), "--out", str(run_dir), "--quiet", *args])
        except SystemExit as exc:
            assert not exc.code, capsys.readouterr().err

    run()
    assert (run_dir / "report.md").is_file() and (run_dir / "derive_count.txt").read_text() == "1"
    # Its stage module predates the executorch and quantize stages: they are skipped with one line.
    state = json.loads((run_dir / "pipeline_state.json").read_text())["stages"]
    assert state["quantize"]["outputs"] == {"kind": "skipped", "reason": "the toy pipeline has no quantize stage"}
    run("--only", "derive")
    assert (run_dir / "derive_count.txt").read_text() == "2"
    assert "toy" in (run_dir / "summary.json").read_text()
    # Its config loader validates the pipeline's sections like any other space's.
    config.write_text(dump_yaml({"name": "toy", "space": "toy", "search": {}, "train": {"steps": 1}}))
    with pytest.raises(SystemExit) as exc:
        main(["pipeline", str(config), "--out", str(tmp_path / "other")])
    assert exc.value.code == 2 and "steps is missing" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_the_table_module_names_only_modules_that_exist():
    tree = ast.parse((PACKAGE / "spaces" / "table.py").read_text())
    refs = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and n.value.startswith("nasdeploy.")]
    assert refs and all(resolve(r) is not None for r in refs)
