"""The epoch driver's run-directory protocol, on a toy loop: resume, config checks, finished runs, force, Ctrl-C."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from nasdeploy.errors import CheckpointError, ConfigError
from nasdeploy.utils.checkpoint import load_checkpoint
from nasdeploy.utils.epoch_driver import EpochBar, EpochLoop, RunOutcome, RunResult, RunSettings, run_epochs
from nasdeploy.utils.ownership import MARK_NAME, mark_folder


@dataclass(frozen=True)
class ToyOptions:
    epochs: int = 3
    lr: float = 0.05
    seed: int = 0
    threads: int = 1


@dataclass(frozen=True)
class ToyConfig:
    train: ToyOptions = field(default_factory=ToyOptions)

    RESUMABLE: ClassVar[tuple[str, ...]] = ("train.threads",)


@dataclass(kw_only=True)
class ToyResult(RunResult):
    weights: dict[str, torch.Tensor]


class ToyTraining(EpochLoop[ToyResult]):
    """A dropout MLP on random data: every epoch draws a shuffle and dropout masks from the global torch RNG."""

    kind, space = "train", "toy"
    run_files = ("final.txt",)
    extra_logs = ("weights.jsonl",)
    console_keys = ("train_loss", "valid_loss")
    checkpointed = {"optimizer": "optimizer"}  # momentum buffers: a resume without them would differ

    def __init__(self, config: ToyConfig, *, stop_in_epoch: int | None = None, nan_in_epoch: int | None = None,
                 tag: str = "a", finish_after: int | None = None):
        super().__init__(config)
        self.stop_in_epoch, self.nan_in_epoch, self.tag = stop_in_epoch, nan_in_epoch, tag
        self.finish_after = finish_after  # the loop's own early-stop criterion: after this (1-based) epoch

    @property
    def settings(self) -> RunSettings:
        return RunSettings(self.config.train.epochs, "cpu", self.config.train.threads)

    def fingerprint(self) -> dict[str, Any]:
        return {"tag": self.tag}

    def setup(self) -> None:
        torch.manual_seed(self.config.train.seed)
        self.x, self.y = torch.randn(32, 4), torch.randn(32, 1)
        self.model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 1))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.config.train.lr, momentum=0.9)

    def meta(self) -> dict[str, Any]:
        return {"toy": True}

    def train_epoch(self, epoch: int, bar: EpochBar) -> dict[str, Any]:
        self.model.train()
        order, total = torch.randperm(32), 0.0
        bar.expect(4)
        for step, idx in enumerate(order.split(8)):
            if epoch == self.stop_in_epoch and step == 2:
                raise KeyboardInterrupt
            loss = nn.functional.mse_loss(self.model(self.x[idx]), self.y[idx])
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            bar.step(float("nan") if epoch == self.nan_in_epoch else loss.item())
            total += loss.item() / 4
        return {"train_loss": total}

    def evaluate(self, epoch: int) -> dict[str, Any]:
        self.model.eval()
        with torch.no_grad():
            return {"valid_loss": nn.functional.mse_loss(self.model(self.x), self.y).item()}

    def extra_records(self, epoch: int, record: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {"weights.jsonl": {"norm": float(self.model[0].weight.detach().norm())}}

    def stop_reason(self, record: dict[str, Any]) -> str | None:
        return "enough" if self.finish_after is not None and record["epoch"] >= self.finish_after else None

    def finish(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        (self.out / "final.txt").write_text("done\n")
        return {"last_loss": history[-1]["train_loss"]}

    def result(self, outcome: RunOutcome) -> ToyResult:
        weights = {} if outcome.was_finished else {k: v.clone() for k, v in self.model.state_dict().items()}
        return ToyResult(out_dir=outcome.out_dir, epochs_done=outcome.epochs_done, epochs=outcome.epochs,
                         finished=outcome.finished, was_finished=outcome.was_finished, weights=weights)


def run(out, config=ToyConfig(), progress=False, force=False, stop_after_epoch=None, **loop):
    return run_epochs(ToyTraining(config, **loop), out, force=force, stop_after_epoch=stop_after_epoch,
                      progress=progress)


def records(path) -> list[dict[str, Any]]:
    """The log's records without what describes how they ran (time, thread count) rather than what they hold."""
    return [{k: v for k, v in json.loads(line).items() if k not in ("epoch_time_s", "threads")}
            for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    return out, run(out)


def assert_same_run(a, b, result_a, result_b):
    assert result_a.finished and result_b.finished
    assert all(torch.equal(result_a.weights[k], result_b.weights[k]) for k in result_a.weights)
    assert records(a / "log.jsonl") == records(b / "log.jsonl")
    assert records(a / "weights.jsonl") == records(b / "weights.jsonl")
    done_a, done_b = (json.loads((d / "done.json").read_text()) for d in (a, b))
    assert done_a["last_loss"] == done_b["last_loss"] and done_a["epochs"] == 3


def test_a_stopped_run_resumes_bitwise(tmp_path, straight):
    out, full = straight
    part = run(tmp_path, stop_after_epoch=1)
    assert not part.finished and part.epochs_done == 1 and not (tmp_path / "done.json").exists()
    assert not (tmp_path / "final.txt").exists()
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["epoch"] == 1 and checkpoint["kind"] == "train" and checkpoint["meta"]["toy"]
    assert checkpoint["meta"]["config"] == {"train": {"epochs": 3, "lr": 0.05, "seed": 0, "threads": 1}}
    # Changing a RESUMABLE key is allowed.
    resumed = run(tmp_path, config=ToyConfig(replace(ToyOptions(), threads=2)))
    assert resumed.epochs_done == 3 and len((tmp_path / "log.jsonl").read_text().splitlines()) == 3
    assert_same_run(out, tmp_path, full, resumed)


def test_ctrl_c_leaves_the_last_completed_epoch_resumable(tmp_path, straight, capsys):
    out, full = straight
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, stop_in_epoch=1, progress=True)  # epoch 1 (0-based) is interrupted half way
    assert "resumes after epoch 1/3" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    assert_same_run(out, tmp_path, full, run(tmp_path))


def test_a_changed_config_is_refused_in_one_line_finished_or_not(tmp_path, straight):
    out, _ = straight
    run(tmp_path, stop_after_epoch=1)
    for where in (tmp_path, out):
        with pytest.raises(ConfigError) as err:
            run(where, config=ToyConfig(replace(ToyOptions(), lr=0.1)))
        message = str(err.value)
        assert "\n" not in message and "different config" in message and "train.lr: 0.05 there vs 0.1 now" in message
    with pytest.raises(ConfigError, match="different tag"):
        run(tmp_path, tag="b")


def test_a_finished_run_is_reported_and_left_alone(straight, capsys):
    out, _ = straight
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != ".lock"}
    again = run(out, progress=True)
    assert again.was_finished and again.finished and again.epochs_done == 3
    assert "is finished; nothing to do" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != ".lock"} == before


def test_force_clears_only_the_runs_own_files(tmp_path, straight):
    out, full = straight
    run(tmp_path, config=ToyConfig(replace(ToyOptions(), lr=0.2)))
    assert (tmp_path / MARK_NAME).is_file()  # the run directory carries the mark of its kind
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "weights.jsonl").write_text('{"epoch": 99}\n')
    again = run(tmp_path, force=True)  # another config: only possible because force starts over
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert_same_run(out, tmp_path, full, again)


def test_a_non_finite_loss_stops_with_one_line_and_the_run_stays_resumable(tmp_path, straight):
    out, full = straight
    with pytest.raises(ConfigError, match=r"^training diverged at epoch 2 \(training loss nan\); lower train.lr$"):
        run(tmp_path, nan_in_epoch=1)
    assert_same_run(out, tmp_path, full, run(tmp_path))


def test_a_directory_of_another_space_or_kind_is_refused(tmp_path, monkeypatch):
    run(tmp_path, stop_after_epoch=1)
    text = (tmp_path / "config.yaml").read_text()
    (tmp_path / "config.yaml").write_text(text.replace("space: toy", "space: darts_cnn"))
    with pytest.raises(ConfigError, match="holds a run of the 'darts_cnn' space, not 'toy'"):
        run(tmp_path)
    (tmp_path / "config.yaml").write_text(text)
    monkeypatch.setattr(ToyTraining, "kind", "search")
    with pytest.raises(CheckpointError, match="is not a toy search checkpoint"):
        run(tmp_path)


def test_a_folder_nasdeploy_did_not_make_is_refused_and_left_alone(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "log.jsonl").write_text("my own notes\n")
    for force in (False, True):
        with pytest.raises(ConfigError, match="did not make"):
            run(foreign, force=force)
    assert [p.name for p in foreign.iterdir()] == ["log.jsonl"]
    assert (foreign / "log.jsonl").read_text() == "my own notes\n"
    with pytest.raises(ConfigError, match="is an export folder, not a run directory"):
        mark_folder(tmp_path / "exported", "export")
        run(tmp_path / "exported")


def test_the_resolved_thread_count_is_recorded_in_the_run(tmp_path, monkeypatch):
    from nasdeploy.utils import runtime

    monkeypatch.setattr(runtime, "auto_threads", lambda share=1: 1)  # "auto" means 1 on this (fake) machine
    run(tmp_path, ToyConfig(ToyOptions(epochs=2, threads="auto")))
    logged = [json.loads(line)["threads"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert logged == [1, 1]
    assert json.loads((tmp_path / "done.json").read_text())["threads"] == 1
    assert load_checkpoint(tmp_path / "checkpoint.pt")["meta"]["threads"] == 1


def test_a_loops_early_stop_finishes_the_run_and_says_why(tmp_path, straight, capsys):
    out, full = straight
    stopped = run(tmp_path / "a", finish_after=2, progress=True)
    assert stopped.finished and stopped.epochs_done == stopped.epochs == 2
    assert "stopped early after epoch 2/3 (enough" in capsys.readouterr().out
    done = json.loads((tmp_path / "a" / "done.json").read_text())
    assert done["epochs"] == 2 and done["stopped_early"] == {"epoch": 2, "epochs": 3, "reason": "enough"}
    assert (tmp_path / "a" / "final.txt").is_file() and len(records(tmp_path / "a" / "log.jsonl")) == 2
    assert records(tmp_path / "a" / "log.jsonl") == records(out / "log.jsonl")[:2]  # the same epochs as a full run
    again = run(tmp_path / "a", finish_after=2)
    assert again.was_finished and again.epochs_done == 2
    # A criterion met by the last epoch before an interruption stops the resumed run at once; a criterion
    # on the last epoch is no early stop; without one, done.json has no stopped_early.
    run(tmp_path / "b", stop_after_epoch=2)
    resumed = run(tmp_path / "b", finish_after=2)
    assert resumed.epochs_done == 2 and len(records(tmp_path / "b" / "log.jsonl")) == 2
    assert json.loads((tmp_path / "b" / "done.json").read_text())["stopped_early"]["epoch"] == 2
    run(tmp_path / "c", finish_after=3)
    assert "stopped_early" not in json.loads((tmp_path / "c" / "done.json").read_text())
    assert "stopped_early" not in json.loads((out / "done.json").read_text())
