"""The search loop: bitwise resume, run-directory contract, finished runs not redone, config checks."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from nasdeploy.config.darts_cnn import DartsCnnSearchConfig
from nasdeploy.errors import ConfigError
from nasdeploy.genotypes import load_genotype
from nasdeploy.search.darts_cnn_loop import run_search
from nasdeploy.utils.checkpoint import load_checkpoint
from nasdeploy.utils.yamlconfig import from_dict, load_config, to_dict

TINY = ["data.dataset=demo", "data.demo_train_size=32", "model.channels=4", "model.layers=3", "model.steps=2",
        "model.multiplier=2", "search.epochs=2", "search.batch_size=8", "search.eval_images=8",
        "search.deterministic=true", "search.threads=1", "search.seed=5"]


def tiny_config(*extra: str):
    return load_config(DartsCnnSearchConfig, None, TINY + list(extra))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("search_full")
    return out, run_search(tiny_config(), out, progress=False)


def test_resume_after_first_checkpoint_is_bitwise_identical(tmp_path, uninterrupted):
    full_dir, full = uninterrupted
    partial = run_search(tiny_config(), tmp_path, stop_after_epoch=1, progress=False)
    assert not partial.finished and partial.epochs_done == 1
    assert not (tmp_path / "genotype.json").exists()
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")  # weights_only=True
    assert ckpt["epoch"] == 1 and ckpt["kind"] == "search"
    assert {"optimizer", "arch_optimizer", "scheduler", "rng"} <= set(ckpt)
    assert ckpt["meta"]["config"] == to_dict(tiny_config()) and ckpt["meta"]["space"] == "darts_cnn"
    assert "alphas_normal" in ckpt["model"] and "alphas_reduce" in ckpt["model"]

    resumed = run_search(tiny_config(), tmp_path, progress=False)
    assert resumed.finished and resumed.epochs_done == 2
    assert torch.equal(resumed.alphas_normal, full.alphas_normal)
    assert torch.equal(resumed.alphas_reduce, full.alphas_reduce)
    assert resumed.genotype == full.genotype
    # The logs tell the same story (times aside), with no epoch repeated.
    def strip(path):
        return [{k: v for k, v in json.loads(line).items() if "time" not in k} for line in path.read_text().splitlines()]
    assert strip(tmp_path / "log.jsonl") == strip(full_dir / "log.jsonl")
    assert strip(tmp_path / "alphas.jsonl") == strip(full_dir / "alphas.jsonl")
    full_state = load_checkpoint(full_dir / "checkpoint.pt")["model"]
    resumed_state = load_checkpoint(tmp_path / "checkpoint.pt")["model"]
    assert all(torch.equal(full_state[k], resumed_state[k]) for k in full_state)


def test_run_directory_contents(uninterrupted):
    out, result = uninterrupted
    assert load_genotype(out / "genotype.json", "cnn_cell") == result.genotype
    done = json.loads((out / "done.json").read_text())
    assert done["finished"] and done["epochs"] == 2 and "valid_acc" in done["final"]
    rows = [json.loads(line) for line in (out / "alphas.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    normal = torch.tensor(rows[-1]["alphas_normal"])
    assert normal.shape == (5, 8)
    torch.testing.assert_close(normal.sum(dim=1), torch.ones(5))
    torch.testing.assert_close(normal, torch.softmax(result.alphas_normal, dim=-1))
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in logs] == [1, 2]
    assert logs[0]["lr"] == pytest.approx(0.025) and logs[1]["lr"] == pytest.approx((0.025 + 0.001) / 2)
    assert all(0.0 <= r["train_acc"] <= 1.0 and r["train_loss"] > 0 for r in logs)
    stored = from_dict(DartsCnnSearchConfig, yaml.safe_load((out / "config.yaml").read_text()))
    assert stored == tiny_config()


def test_finished_run_is_not_redone(uninterrupted, capsys):
    out, result = uninterrupted
    before = (out / "checkpoint.pt").stat().st_mtime_ns
    again = run_search(tiny_config(), out)
    assert again.was_finished and again.genotype == result.genotype
    assert torch.equal(again.alphas_normal, result.alphas_normal)
    assert (out / "checkpoint.pt").stat().st_mtime_ns == before
    assert "finished" in capsys.readouterr().out
    # A finished run checks its stored config before reporting "nothing to do".
    with pytest.raises(ConfigError, match=r"different config .*search.lr"):
        run_search(tiny_config("search.lr=0.05"), out, progress=False)


def test_resume_with_a_different_config_is_refused(tmp_path):
    run_search(tiny_config("search.epochs=3"), tmp_path, stop_after_epoch=1, progress=False)
    with pytest.raises(ConfigError, match=r"different config .*search.lr: 0.025 there vs 0.05 now"):
        run_search(tiny_config("search.epochs=3", "search.lr=0.05"), tmp_path, progress=False)


def test_too_little_data_for_a_batch_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="fewer than one batch"):
        run_search(tiny_config("search.batch_size=32"), tmp_path, progress=False)


@pytest.mark.parametrize("override, match", [
    ("search.epoch=2", "unknown config key 'search.epoch'; did you mean 'search.epochs'"),
    ("search.order=third", "search.order must be 'first' or 'second'"),
    ("search.lr=fast", "search.lr must be a number"),
    ("model.channels=7", "even"),
    ("search.arch_betas=[0.5]", "search.arch_betas must have 2 values"),
])
def test_config_errors_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(override)


def test_float_strings_from_yaml_are_numbers():
    assert tiny_config("search.arch_lr=3e-4").search.arch_lr == pytest.approx(3e-4)
