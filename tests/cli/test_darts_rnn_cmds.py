"""The darts_rnn space through the generic CLI (search, train, profile of a registry genotype) and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_cli

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SEARCH, TRAIN = str(CONFIGS / "darts_rnn_demo_search.yaml"), str(CONFIGS / "darts_rnn_demo_train.yaml")




TINY = ["data.demo_train_sentences=40", "data.demo_valid_sentences=10", "data.demo_test_sentences=6",
        "model.emsize=8", "model.nhid=8", "model.steps=2", "search.epochs=1", "search.batch_size=4",
        "search.bptt=5", "search.max_batches_per_epoch=2", "search.threads=1"]


def test_search_then_train_from_the_cli(tmp_path, capsys):
    code, out, err = run_cli(["search", "--config", SEARCH, "--out", str(tmp_path / "s"), "--no-progress", *TINY], capsys)
    assert code == 0, err
    assert "genotype:" in out and (tmp_path / "s" / "genotype.json").is_file()
    train = ["data.demo_train_sentences=40", "data.demo_valid_sentences=10", "data.demo_test_sentences=6",
             "model.emsize=8", "model.nhid=8", "train.epochs=1", "train.batch_size=4", "train.eval_batch_size=4",
             "train.bptt=5", "train.max_batches_per_epoch=2", "train.threads=1"]
    code, out, err = run_cli(["train", "--config", TRAIN, "--genotype", str(tmp_path / "s" / "genotype.json"),
                          "--out", str(tmp_path / "t"), "--no-progress", *train], capsys)
    assert code == 0, err
    assert "test ppl" in out and json.loads((tmp_path / "t" / "done.json").read_text())["epochs"] == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["search", "--config", SEARCH, "--out", "{tmp}/x", "search.epoch=2"], "unknown config key 'search.epoch'; did you mean 'search.epochs'?"),
        (["search", "--config", SEARCH, "--out", "{tmp}/x", "search.lr=fast"], "search.lr must be a number, got 'fast'"),
        (["search", "--config", SEARCH, "--out", "{tmp}/x", "model.dropout=1.5"], "model.dropout must be a probability"),
        (["search", "--config", SEARCH, "--out", "{tmp}/x", "data.dataset=ptb"], "needs a data folder"),
        (["search", "--config", SEARCH, "--out", "{tmp}/x", "--data-dir", "{tmp}/nope", "data.dataset=ptb"], "corpus folder not found"),
        (["train", "--config", TRAIN, "--genotype", "DARTS_V2", "--out", "{tmp}/x"], "wrong genotype kind"),
        (["profile"], "name at least one TARGET"),
        (["export", "{tmp}/none.pt", "--out", "{tmp}/m"], "checkpoint not found"),
        (["profile", "DARTS_V2_RNN", "--layers", "3"], "--layers does not apply"),
    ],
)
def test_bad_input_gives_one_line_errors(tmp_path, capsys, argv, message):
    code, _, err = run_cli([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_profile_from_a_registry_genotype(capsys):
    code, out, err = run_cli(["profile", "DARTS_V2_RNN", "--num-classes", "50", "--channels", "16", "--seq-len", "5",
                          "--warmup", "1", "--runs", "2"], capsys)
    assert code == 0, err
    macs = (32 * 32 + 8 * 16 * 32 + 16 * 50) / 1e6
    assert f"{macs:.3f} M" in out
