"""The recurrent pipeline (search -> train -> export -> profile) on tiny settings, and its config files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nasdeploy.rnn_pipeline import load_rnn_pipeline_config, run_rnn_pipeline
from nasdeploy.search.rnn_config import load_rnn_search_config
from nasdeploy.train.rnn_config import load_rnn_train_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DATA = ["demo_train_sentences=40", "demo_valid_sentences=10", "demo_test_sentences=6"]
TINY = (
    [f"search_run.data.{d}" for d in DATA] + [f"train_run.data.{d}" for d in DATA]
    + ["search_run.model.emsize=8", "search_run.model.nhid=8", "search_run.model.steps=2",
       "search_run.search.epochs=1", "search_run.search.batch_size=4", "search_run.search.bptt=5",
       "search_run.search.max_batches_per_epoch=1", "search_run.search.progress=false",
       "train_run.model.emsize=8", "train_run.model.nhid=8", "train_run.model.seq_len=3",
       "train_run.train.epochs=1", "train_run.train.batch_size=4", "train_run.train.eval_batch_size=4",
       "train_run.train.bptt=5", "train_run.train.max_batches_per_epoch=1", "train_run.train.progress=false",
       "export.seq_len=3", "profile.seq_len=3", "profile.runs=2", "profile.warmup=1"]
)


def test_pipeline_runs_every_stage_and_is_not_redone(tmp_path):
    config = load_rnn_pipeline_config(CONFIGS / "rnn_demo.yaml", TINY)
    summary = run_rnn_pipeline(config, tmp_path, echo=lambda _: None)
    for name in ("search/genotype.json", "train/best.pt", "model.onnx", "export.json", "profile.json", "profile.md",
                 "summary.json", "summary.md"):
        assert (tmp_path / name).is_file(), name
    assert summary["export"]["parity_ok"] and summary["profile"]["params"] == summary["train"]["params"]
    assert len(summary["genotype"]) == 2 and summary["train"]["test_ppl"] > 1.0
    messages = []
    again = run_rnn_pipeline(config, tmp_path, echo=messages.append)
    assert again == json.loads((tmp_path / "summary.json").read_text()) and "already finished" in messages[0]


@pytest.mark.parametrize("name", ["rnn_demo.yaml", "rnn_ptb_search.yaml", "rnn_ptb_train.yaml"])
def test_shipped_configs_load(name):
    search = load_rnn_search_config(CONFIGS / name) if "train" not in name else None
    train = load_rnn_train_config(CONFIGS / name) if "search" not in name else None
    if name == "rnn_ptb_search.yaml":  # the published search settings
        s, m = search.search, search.model
        assert (m.emsize, m.nhid, s.batch_size, s.bptt, s.lr, s.clip, s.epochs, s.weight_decay) == (300, 300, 256, 35, 20.0, 0.25, 50, 5e-7)
        assert (m.dropout, m.dropouth, m.dropoutx, m.dropouti, m.dropoute) == (0.75, 0.25, 0.75, 0.2, 0.0)
        assert (s.arch_lr, s.arch_betas, s.arch_weight_decay) == (3e-3, (0.9, 0.999), 1e-3)
    if name == "rnn_ptb_train.yaml":  # the published evaluation settings
        t, m = train.train, train.model
        assert (m.emsize, m.nhid, t.batch_size, t.weight_decay, t.nonmono) == (850, 850, 64, 8e-7, 5)
        assert (m.dropout, m.dropouth, m.dropoutx, m.dropouti, m.dropoute) == (0.75, 0.25, 0.75, 0.2, 0.1)
    if name == "rnn_demo.yaml":
        assert load_rnn_pipeline_config(CONFIGS / name).export.seq_len == train.model.seq_len


def test_the_generic_pipeline_command_runs_a_recurrent_pipeline_file(tmp_path, capsys):
    from nasdeploy.cli.main import main

    args = ["pipeline", str(CONFIGS / "rnn_demo.yaml"), "--out", str(tmp_path / "run")]
    for item in TINY:
        args += ["--set", item]
    try:
        main(args)
    except SystemExit as exc:
        assert not exc.code, capsys.readouterr()
    assert "summary:" in capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["export"]["parity_ok"] and (tmp_path / "run" / "model.onnx").is_file()
    try:
        main(["pipeline", str(CONFIGS / "rnn_demo.yaml"), "--out", str(tmp_path / "run"), "--only", "train"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "redoes all stages or none" in capsys.readouterr().err
