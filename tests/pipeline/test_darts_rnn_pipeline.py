"""The recurrent pipeline through the one pipeline runner (state file, --force/--only, resume, report), and its configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import assert_commands_parse
from nasdeploy.cli.main import main
from nasdeploy.config.darts_rnn import DartsRnnSearchConfig, DartsRnnTrainConfig
from nasdeploy.errors import ConfigError
from nasdeploy.pipeline.config import load_pipeline_config
from nasdeploy.pipeline.runner import run_pipeline
from nasdeploy.utils.yamlconfig import dump_yaml, load_config, load_yaml

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DATA = ["demo_train_sentences=40", "demo_valid_sentences=10", "demo_test_sentences=6"]
SEARCH = [f"data.{d}" for d in DATA] + [
    "model.emsize=8", "model.nhid=8", "model.steps=2", "search.epochs=1", "search.batch_size=4", "search.bptt=5",
    "search.max_batches_per_epoch=1"]
TRAIN = [f"data.{d}" for d in DATA] + [
    "model.emsize=8", "model.nhid=8", "model.seq_len=3", "train.epochs=2", "train.batch_size=4",
    "train.eval_batch_size=4", "train.bptt=5", "train.max_batches_per_epoch=1"]
TINY = ([f"search.{o}" for o in SEARCH] + [f"train.{o}" for o in TRAIN]
        + ["export.seq_len=3", "profile.seq_len=3", "profile.runs=2", "profile.warmup=1"])


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_recurrent_pipeline_runs_through_the_one_runner(tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["pipeline", str(CONFIGS / "darts_rnn_demo_pipeline.yaml"), "--out", str(run_dir), "--quiet"]
    for item in TINY:
        args += ["--set", item]
    code, out, err = _cli(args, capsys)
    assert code == 0, err
    assert "report:" in out
    for name in ("pipeline_state.json", "report.md", "summary.json", "genotype.json", "model.onnx", "profile.json",
                 "figures/cells.svg", "figures/alphas.png", "figures/curves.png", "search/done.json", "train/done.json"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["space"] == "darts_rnn" and summary["export"]["parity"]["passed"]
    assert summary["search"]["mixed_op"] == "reference" and summary["train"]["test_ppl"] > 1.0
    rows = summary["profile"]["rows"]
    assert rows[0]["found"] and rows[0]["params"] == summary["train"]["params"] and rows[1]["name"] == "DARTS_V2_RNN"
    report = (run_dir / "report.md").read_text()
    assert "perplexity" in report and "MACs / token" in report and "mixed-op: reference" in report
    # No ExecuTorch / INT8 path for the language model: both stages are done, with one line each.
    assert "ExecuTorch stage (executorch): skipped: the recurrent language model has no ExecuTorch" in report
    assert "| quantize | " in report and "skipped: the recurrent language model has no INT8 path" in report
    assert_commands_parse(summary["commands"])
    # derive published the genotype the search wrote (names aside)
    assert summary["genotype"]["recurrent"] == json.loads((run_dir / "search" / "genotype.json").read_text())["recurrent"]
    # The run directory stores its search config headed by its space: `nasdeploy search --out DIR` alone resumes it.
    assert load_yaml(run_dir / "search" / "config.yaml")["space"] == "darts_rnn"
    code, out, err = _cli(["search", "--out", str(run_dir / "search")], capsys)
    assert code == 0 and "is finished; nothing to do" in out + err

    onnx_before = (run_dir / "export" / "model.onnx").stat().st_mtime_ns
    code, _, err = _cli(args + ["--only", "export"], capsys)
    assert code == 0, err
    assert (run_dir / "export" / "model.onnx").stat().st_mtime_ns != onnx_before
    state = json.loads((run_dir / "pipeline_state.json").read_text())["stages"]
    train_finished = state["train"]["finished"]
    code, _, err = _cli(args + ["--force", "train"], capsys)
    assert code == 0, err
    state = json.loads((run_dir / "pipeline_state.json").read_text())["stages"]
    assert state["train"]["finished"] > train_finished and state["search"]["status"] == "done"


def test_an_interrupted_recurrent_training_resumes(tmp_path):
    config = load_pipeline_config(CONFIGS / "darts_rnn_demo_pipeline.yaml", TINY)
    first = run_pipeline(config, tmp_path, progress=False, stop_after_epoch=1)
    assert first.interrupted == "train" and (tmp_path / "train" / "checkpoint.pt").is_file()
    assert not (tmp_path / "train" / "done.json").exists()
    log = (tmp_path / "train" / "log.jsonl").read_text().splitlines()
    assert len(log) == 1
    second = run_pipeline(config, tmp_path, progress=False)
    assert second.interrupted is None
    assert second.ran == ["train", "export", "executorch", "quantize", "profile", "report"]
    assert [json.loads(r)["epoch"] for r in (tmp_path / "train" / "log.jsonl").read_text().splitlines()] == [1, 2]


def test_force_and_only_need_a_pipeline_run_directory(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "keep.txt").write_text("mine")
    for option in ("--force", "--only"):
        code, _, err = _cli(["pipeline", str(CONFIGS / "darts_rnn_demo_pipeline.yaml"), "--out", str(tmp_path), option, "train"], capsys)
        assert code == 2 and "holds no pipeline run" in err and err.count("\n") == 1
    assert (tmp_path / "train" / "keep.txt").read_text() == "mine"


def test_a_stage_file_of_another_space_is_refused(tmp_path):
    path = tmp_path / "mixed.yaml"
    path.write_text(dump_yaml({"space": "darts_rnn", "search": {"config": str(CONFIGS / "autodeeplab_demo_search.yaml")},
                               "train": {"config": str(CONFIGS / "darts_rnn_demo_train.yaml")}}))
    (tmp_path / "autodeeplab.yaml").write_text(dump_yaml({"space": "autodeeplab", **load_yaml(CONFIGS / "autodeeplab_demo_search.yaml")}))
    path.write_text(dump_yaml({"space": "darts_rnn", "search": {"config": "autodeeplab.yaml"},
                               "train": {"config": str(CONFIGS / "darts_rnn_demo_train.yaml")}}))
    with pytest.raises(ConfigError, match="another space"):
        load_pipeline_config(path)


@pytest.mark.parametrize("name", ["darts_rnn_demo_search.yaml", "darts_rnn_ptb_search.yaml", "darts_rnn_demo_train.yaml", "darts_rnn_ptb_train.yaml"])
def test_shipped_configs_load(name):
    search = load_config(DartsRnnSearchConfig, CONFIGS / name) if "search" in name else None
    train = load_config(DartsRnnTrainConfig, CONFIGS / name) if "train" in name else None
    if name == "darts_rnn_ptb_search.yaml":  # the published search settings
        s, m = search.search, search.model
        assert (m.emsize, m.nhid, s.batch_size, s.bptt, s.lr, s.clip, s.epochs, s.weight_decay) == (300, 300, 256, 35, 20.0, 0.25, 50, 5e-7)
        assert (m.dropout, m.dropouth, m.dropoutx, m.dropouti, m.dropoute) == (0.75, 0.25, 0.75, 0.2, 0.0)
        assert (s.arch_lr, s.arch_betas, s.arch_weight_decay) == (3e-3, (0.9, 0.999), 1e-3)
    if name == "darts_rnn_ptb_train.yaml":  # the published evaluation settings
        t, m = train.train, train.model
        assert (m.emsize, m.nhid, t.batch_size, t.weight_decay, t.nonmono) == (850, 850, 64, 8e-7, 5)
        assert (m.dropout, m.dropouth, m.dropoutx, m.dropouti, m.dropoute) == (0.75, 0.25, 0.75, 0.2, 0.1)
    if name == "darts_rnn_demo_train.yaml":
        assert load_pipeline_config(CONFIGS / "darts_rnn_demo_pipeline.yaml").export.seq_len == train.model.seq_len
