"""`nasdeploy rnn ...`: the thin CLI over the recurrent library, and its one-line errors."""

from __future__ import annotations

import json

import pytest

from nasdeploy.cli.main import main


def run(argv, capsys):
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


TINY = ["data.demo_train_sentences=40", "data.demo_valid_sentences=10", "data.demo_test_sentences=6",
        "model.emsize=8", "model.nhid=8", "model.steps=2", "search.epochs=1", "search.batch_size=4",
        "search.bptt=5", "search.max_batches_per_epoch=2", "search.threads=1"]


def test_rnn_search_then_train_from_the_cli(tmp_path, capsys):
    code, out, err = run(["rnn", "search", "--out", str(tmp_path / "s"), *TINY], capsys)
    assert code == 0, err
    assert "genotype:" in out and (tmp_path / "s" / "genotype.json").is_file()
    train = ["data.demo_train_sentences=40", "data.demo_valid_sentences=10", "data.demo_test_sentences=6",
             "model.emsize=8", "model.nhid=8", "train.epochs=1", "train.batch_size=4", "train.eval_batch_size=4",
             "train.bptt=5", "train.max_batches_per_epoch=2", "train.threads=1"]
    code, out, err = run(["rnn", "train", "--genotype", str(tmp_path / "s" / "genotype.json"),
                          "--out", str(tmp_path / "t"), *train], capsys)
    assert code == 0, err
    assert "test ppl" in out and json.loads((tmp_path / "t" / "done.json").read_text())["epochs"] == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["rnn", "search", "--out", "{tmp}/x", "search.epoch=2"], "unknown config key 'search.epoch'; did you mean 'search.epochs'?"),
        (["rnn", "search", "--out", "{tmp}/x", "search.lr=fast"], "search.lr must be a number, got 'fast'"),
        (["rnn", "search", "--out", "{tmp}/x", "model.dropout=1.5"], "model.dropout must be a probability"),
        (["rnn", "search", "--out", "{tmp}/x", "data.dataset=ptb"], "needs a data folder"),
        (["rnn", "search", "--out", "{tmp}/x", "--data-dir", "{tmp}/nope", "data.dataset=ptb"], "corpus folder not found"),
        (["rnn", "search", "--config", "{tmp}/missing.yaml", "--out", "{tmp}/x"], "config file not found"),
        (["rnn", "train", "--genotype", "DARTS_V2", "--out", "{tmp}/x"], "wrong genotype kind"),
        (["rnn", "profile"], "exactly one of --checkpoint or --genotype"),
        (["rnn", "export", "--checkpoint", "{tmp}/none.pt", "-o", "{tmp}/m.onnx"], "checkpoint not found"),
    ],
)
def test_bad_input_gives_one_line_errors(tmp_path, capsys, argv, message):
    code, _, err = run([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_profile_from_a_registry_genotype(capsys):
    code, out, err = run(["rnn", "profile", "--genotype", "DARTS_V2_RNN", "--ntokens", "50", "--nhid", "16",
                          "--seq-len", "5", "--runs", "2"], capsys)
    assert code == 0, err
    macs = (32 * 32 + 8 * 16 * 32 + 16 * 50) / 1e6
    assert f"{macs:.3f} M" in out
