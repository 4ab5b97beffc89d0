"""`nasdeploy pipeline --seeds`: the search stage as the DARTS selection over seeds on a tiny config (real child
processes), the chosen genotype published and trained, the report's per-seed table, resume, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import CONFIGS, TINY_PIPELINE, one_error_line, run_cli, tree_snapshot

from nasdeploy.genotypes import genotype_to_dict, load_genotype
from nasdeploy.pipeline.results import SearchStageResult, stage_result_from_dict
from nasdeploy.pipeline.runner import STAGE_ORDER
from nasdeploy.pipeline.state import PipelineState
from nasdeploy.search.selection_record import load_selection


def tiny_selection_config(tmp_path: Path) -> Path:
    """The tiny pipeline with a selection block (seed 5 only: --seeds must win) and a one-epoch short training."""
    data = json.loads(json.dumps(TINY_PIPELINE))
    data["search"]["selection"] = {"seeds": [5], "epochs": 1, "parallel": 1, "train": {"train": {"batch_size": 8}}}
    data["train"]["train"]["epochs"] = 1
    path = tmp_path / "tiny_seeds.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def selected_run(tmp_path_factory):
    from nasdeploy.cli.main import main

    tmp = tmp_path_factory.mktemp("selection")
    run_dir, config = tmp / "run", tiny_selection_config(tmp)
    try:
        main(["pipeline", str(config), "--out", str(run_dir), "--seeds", "0,1", "--quiet"])
    except SystemExit as exc:
        assert not exc.code, exc.code
    return config, run_dir


def test_the_chosen_seed_is_published_trained_and_reported(selected_run):
    _, run_dir = selected_run
    record = load_selection(run_dir / "search")
    assert [r.seed for r in record.seeds] == [0, 1] and not (run_dir / "search" / "seed-5").exists()
    chosen = record.chosen
    assert chosen.metric == max(r.metric for r in record.seeds)
    # derive published the chosen seed's own search result; the full training ran on it
    searched = load_genotype(run_dir / "search" / f"seed-{chosen.seed}" / "search" / "genotype.json", "cnn_cell")
    published = load_genotype(run_dir / "genotype.json", "cnn_cell")
    assert (published.normal, published.reduce) == (searched.normal, searched.reduce)
    assert json.loads((run_dir / "train" / "done.json").read_text())["finished"] is True

    state = PipelineState.load(run_dir)
    assert all(state.is_done(stage) for stage in STAGE_ORDER)
    search = state.result("search")
    assert isinstance(search, SearchStageResult) and search.selection is not None
    assert search.run_folder == f"search/seed-{chosen.seed}/search"
    rows = {r.seed: r for r in search.selection.seeds}
    assert [s for s, r in rows.items() if r.chosen] == [chosen.seed]
    for seed, row in rows.items():
        done = json.loads((run_dir / "search" / row.search_dir / "done.json").read_text())
        assert row.genotype == genotype_to_dict(load_genotype(run_dir / "search" / row.search_dir / "genotype.json"))
        assert row.normal_skips == done["normal_skips"] and row.parameter_free_ops == done["parameter_free_ops"]
        assert row.metric == json.loads((run_dir / "search" / f"seed-{seed}" / "train" / "done.json").read_text())["top1"]
    # the typed result round-trips through pipeline_state.json
    stored = json.loads((run_dir / "pipeline_state.json").read_text())["stages"]["search"]["outputs"]
    assert stage_result_from_dict(json.loads(json.dumps(stored))) == search
    assert stage_result_from_dict(search.to_dict()) == search

    report = (run_dir / "report.md").read_text()
    section = report.split("## Selection over seeds", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| seed")]
    assert [line.split(" | ")[0] for line in lines] == ["| 0", "| 1"]
    assert [("**chosen**" in line) for line in lines] == [s == chosen.seed for s in (0, 1)]
    assert f"{100 * record.mean:.2f}% +- {100 * record.std:.2f}%" in section
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["search"]["selection"]["chosen_seed"] == chosen.seed
    assert "--seeds 0,1" in summary["commands"]["pipeline"]


def test_a_rerun_resumes_without_redoing_the_seeds(selected_run, capsys):
    config, run_dir = selected_run
    seeds = tree_snapshot(run_dir / "search")
    # A pipeline killed after its seeds finished but before the search stage was recorded: the stage runs again.
    state = PipelineState.load(run_dir)
    state.stages["search"]["status"] = "running"
    state.save()
    code, _, err = run_cli(["pipeline", str(config), "--out", str(run_dir), "--seeds", "0,1"], capsys)
    assert code == 0, err
    assert "[pipeline] search: running" in err
    after = tree_snapshot(run_dir / "search")
    for name in seeds:  # no seed's search or short training was touched (logs and records as they were)
        if name.startswith("seed-") and "/" in name and name.split("/")[1] in ("search", "train"):
            assert after.get(name) == seeds[name], name
    assert PipelineState.load(run_dir).is_done("search")


def test_a_space_without_selection_rules_is_one_error_line(tmp_path, capsys):
    data = yaml.safe_load((CONFIGS / "darts_rnn_demo_pipeline.yaml").read_text())
    for section in ("search", "train"):
        data[section]["config"] = str(CONFIGS / data[section]["config"])
    data["search"]["selection"] = {"seeds": [0, 1]}
    config = tmp_path / "rnn.yaml"
    config.write_text(yaml.safe_dump(data))
    line = one_error_line(capsys, ["pipeline", str(config), "--out", str(tmp_path / "a")])
    assert "not supported for the darts_rnn space" in line
    line = one_error_line(capsys, ["pipeline", str(CONFIGS / "darts_rnn_demo_pipeline.yaml"), "--out",
                                   str(tmp_path / "b"), "--seeds", "0,1"])
    assert "not supported for the darts_rnn space" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
