"""`nasdeploy search --seeds` end to end on a tiny config: real child processes, resume, and its one-line errors."""

from __future__ import annotations

import json

import yaml
from helpers import one_error_line, run_cli

from nasdeploy.genotypes import load_genotype
from nasdeploy.search.selection_record import load_selection

TINY = {
    "data": {"dataset": "demo", "demo_train_size": 64, "augment": "none"},
    "model": {"channels": 4, "layers": 3, "steps": 2, "multiplier": 2, "stem_multiplier": 1, "mixed_op": "reference"},
    "search": {"epochs": 1, "batch_size": 8, "eval_images": 8, "threads": 1, "device": "cpu"},
    "selection": {"epochs": 1, "train": {"train": {"batch_size": 8}}},
}


def test_seeds_run_as_children_resume_and_keep_the_best(tmp_path, capsys):
    config, out = tmp_path / "search.yaml", tmp_path / "sel"
    config.write_text(yaml.safe_dump(TINY))
    code, stdout, err = run_cli(["search", "--config", str(config), "--out", str(out), "--seeds", "0",
                                 "--no-progress"], capsys)
    assert code == 0, err
    assert "seed 0: search in" in stdout and "seed 0: top1 " in stdout
    code, stdout, err = run_cli(["search", "--config", str(config), "--out", str(out), "--seeds", "0,1",
                                 "--no-progress"], capsys)
    assert code == 0, err
    assert "seed 0: search finished earlier" in stdout and "seed 0: short training finished earlier" in stdout
    assert "seed 1: search in" in stdout and "top1 over 2 seeds: " in stdout

    record = load_selection(out)
    assert [r.seed for r in record.seeds] == [0, 1]
    best = max(record.seeds, key=lambda r: (r.metric, -r.seed))
    assert record.chosen_seed == best.seed
    for r in record.seeds:  # each seed's genotype is what its own search derived, its metric what its training logged
        assert r.genotype == load_genotype(out / r.search_dir / "genotype.json")
        assert r.metric == json.loads((out / r.train_dir / "done.json").read_text())["top1"]
        stored = yaml.safe_load((out / r.search_dir / "config.yaml").read_text())
        assert stored["search"]["seed"] == r.seed
    assert load_genotype(out / "genotype.json") == record.chosen.genotype
    train = yaml.safe_load((out / "train.yaml").read_text())
    assert train["data"]["holdout"] == 0.2 and train["train"]["epochs"] == 1 and train["model"]["channels"] == 4

    # --out alone resumes from the stored config (seeds included): nothing is left to run.
    code, stdout, err = run_cli(["search", "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    assert stdout.count("finished earlier") == 4 and "search in" not in stdout


def test_bad_seed_lists_and_unsupported_spaces_are_one_line_errors(tmp_path, capsys):
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(TINY))
    line = one_error_line(capsys, ["search", "--config", str(config), "--out", str(tmp_path / "a"), "--seeds", "0,x"])
    assert "--seeds must be comma-separated integers" in line
    line = one_error_line(capsys, ["search", "--config", str(config), "--out", str(tmp_path / "b"), "--seeds", "0",
                                   "selection.epochs=0"])
    assert "selection.epochs must be >= 1" in line
    other = tmp_path / "autodeeplab.yaml"
    other.write_text(yaml.safe_dump({"space": "autodeeplab", "search": {"epochs": 1}}))
    line = one_error_line(capsys, ["search", "--config", str(other), "--out", str(tmp_path / "c"), "--seeds", "0,1"])
    assert "not supported for the autodeeplab space" in line
    assert not any((tmp_path / name).exists() for name in "abc")
