"""`nasdeploy pipeline --seeds`: the search stage as the DARTS selection over seeds on a tiny config (real child
processes), the chosen genotype published and trained, the report's per-seed table, resume, and its errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from helpers import CONFIGS, TINY_PIPELINE, assert_commands_parse, one_error_line, run_cli, tree_snapshot

from nasdeploy.config.selection import SelectionOptions
from nasdeploy.genotypes import genotype_to_dict, load_genotype
from nasdeploy.pipeline.config import load_pipeline_config
from nasdeploy.pipeline.results import SearchStageResult, stage_result_from_dict
from nasdeploy.pipeline.runner import STAGE_ORDER, run_pipeline
from nasdeploy.pipeline.state import PipelineState
from nasdeploy.search.selection_record import load_selection


def tiny_selection_config(tmp_path: Path) -> Path:
    """The tiny pipeline with a selection block (seed 5 only: --seeds must win) and a one-epoch short training."""
    data = json.loads(json.dumps(TINY_PIPELINE))
    data["search"]["selection"] = {"seeds": [5], "epochs": 1, "parallel": 1, "train": {"train": {"batch_size": 8}}}
    path = tmp_path / "tiny_seeds.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def selected_run(tmp_path_factory):
    """Search over seeds 0 and 1, derive, and one epoch of the full training (stopped there: the deployment stages
    add nothing here); then the report alone, by the command line with --seeds (its config must be the run's)."""
    from nasdeploy.cli.main import main

    tmp = tmp_path_factory.mktemp("selection")
    run_dir, config = tmp / "run", tiny_selection_config(tmp)
    loaded = load_pipeline_config(config)
    assert loaded.selection == SelectionOptions(seeds=(5,), epochs=1, train={"train": {"batch_size": 8}})
    first = run_pipeline(replace(loaded, selection=replace(loaded.selection, seeds=(0, 1))), run_dir, progress=False,
                         stop_after_epoch=1)
    assert first.ran == ["search", "derive"] and first.interrupted == "train"
    try:
        main(["pipeline", str(config), "--out", str(run_dir), "--seeds", "0,1", "--only", "report", "--quiet"])
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
    assert (run_dir / "train" / "checkpoint.pt").is_file()  # the full training started on it
    train = yaml.safe_load((run_dir / "search" / "train.yaml").read_text())
    assert train["train"]["epochs"] == 1 and train["train"]["batch_size"] == 8  # the config's selection block

    state = PipelineState.load(run_dir)
    assert [s for s in STAGE_ORDER if state.is_done(s)] == ["search", "derive", "report"]
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
    # the alpha and curve figures come from the chosen seed's search (the selection folder logs no epochs itself)
    assert {"alphas", "alphas_final", "curves"} <= set(summary["figures"]) and not (run_dir / "search" / "log.jsonl").exists()
    assert "--seeds 0,1" in summary["commands"]["pipeline"] and "--seeds 0,1" in summary["commands"]["derive"]
    assert_commands_parse(summary["commands"])  # search: `nasdeploy search` over the selection folder's config


def test_a_rerun_resumes_without_redoing_the_seeds(selected_run, capsys):
    config, run_dir = selected_run
    seeds = tree_snapshot(run_dir / "search")
    # The search stage again (as after a pipeline killed before it recorded its end): every seed is finished.
    code, out, err = run_cli(["pipeline", str(config), "--out", str(run_dir), "--seeds", "0,1", "--only", "search"],
                             capsys)
    assert code == 0, err
    assert out.count("finished earlier") == 4 and "search in" not in out  # 2 seeds x (search, short training)
    assert "[pipeline] search: running" in err and "[pipeline] search: done" in err
    after = tree_snapshot(run_dir / "search")
    touched = [name for name in seeds if name.startswith("seed-") and after.get(name) != seeds[name]]
    assert touched == [] and sorted(after) == sorted(seeds)  # no seed's search or short training ran again
    assert PipelineState.load(run_dir).result("search") is not None


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
    bad = yaml.safe_load(tiny_selection_config(tmp_path).read_text())
    bad["search"]["selection"]["epochs"] = 0
    config.write_text(yaml.safe_dump(bad))
    line = one_error_line(capsys, ["pipeline", str(config), "--out", str(tmp_path / "c"), "--seeds", "0,1"])
    assert "section search: selection.epochs must be >= 1" in line
    line = one_error_line(capsys, ["pipeline", str(tiny_selection_config(tmp_path)), "--out", str(tmp_path / "d"),
                                   "--seeds", "0,0"])
    assert "--seeds must not repeat a seed" in line
    assert not any((tmp_path / name).exists() for name in "abcd")
