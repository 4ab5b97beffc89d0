"""`nasdeploy search` and `nasdeploy train` end to end on tiny settings, and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nasdeploy.cli.main import main
from nasdeploy.genotypes import load_genotype

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SEARCH_TINY = ["data.demo_train_size=32", "model.channels=4", "model.layers=3", "search.epochs=1", "search.batch_size=8",
               "search.eval_images=8", "search.threads=1"]
TRAIN_TINY = ["data.demo_train_size=16", "data.demo_test_size=8", "model.channels=4", "model.layers=3",
              "train.epochs=1", "train.batch_size=8", "train.threads=1"]


def run_cli(args, capsys):
    """(exit code, stdout, stderr) of the CLI."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_search_then_train_through_the_cli(tmp_path, capsys):
    search_dir, train_dir = tmp_path / "search", tmp_path / "train"
    code, out, err = run_cli(["search", "--config", str(CONFIGS / "darts_cnn_demo_search.yaml"), "--out", str(search_dir),
                              "--no-progress", *SEARCH_TINY], capsys)
    assert code == 0, err
    assert "genotype (1/1 epochs)" in out
    for name in ("genotype.json", "alphas.jsonl", "log.jsonl", "checkpoint.pt", "config.yaml", "done.json"):
        assert (search_dir / name).is_file(), name
    genotype = load_genotype(search_dir / "genotype.json", "cnn_cell")
    assert len(genotype.normal) == 8 and genotype.normal_concat == (2, 3, 4, 5)

    # Pointed at again (no --config: the run's own config.yaml), a finished search is not redone.
    code, out, _ = run_cli(["search", "--out", str(search_dir), "--no-progress"], capsys)
    assert code == 0 and "is finished; nothing to do" in out

    code, out, err = run_cli(["train", "--genotype", str(search_dir), "--config", str(CONFIGS / "darts_cnn_demo_train.yaml"),
                              "--out", str(train_dir), "--no-progress", *TRAIN_TINY], capsys)
    assert code == 0, err
    final = json.loads((train_dir / "done.json").read_text())
    assert final["epochs"] == 1 and final["genotype"]["normal"] == [list(p) for p in genotype.normal]
    assert "top1" in out


@pytest.mark.parametrize("args, message", [
    (["search", "--config", "no/such.yaml"], "error: config file not found: no/such.yaml"),
    (["search", "--config", str(CONFIGS / "darts_cnn_demo_search.yaml"), "search.epoch=2"],
     "error: unknown config key 'search.epoch'; did you mean 'search.epochs'?"),
    (["search", "--config", str(CONFIGS / "darts_cnn_cifar10_search.yaml"), "--data-dir", "/nonexistent/cifar"],
     "error: CIFAR-10 data directory does not exist: /nonexistent/cifar"),
    (["search"], "error: give --config FILE"),
    (["train", "--config", str(CONFIGS / "darts_cnn_demo_train.yaml"), "--genotype", "DARTS_V3"], "error: "),
])
def test_bad_input_gives_one_line_errors(tmp_path, capsys, args, message):
    code, _, err = run_cli(args + ["--out", str(tmp_path / "run")] if "--out" not in args else args, capsys)
    assert code == 2
    assert err.startswith(message) and err.count("\n") == 1, err
