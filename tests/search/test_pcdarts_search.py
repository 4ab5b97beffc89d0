"""model.partial_channels in search configs and runs: validated at load, betas trained, saved and derived from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nasdeploy.errors import ConfigError
from nasdeploy.genotypes import load_genotype
from nasdeploy.config.darts_cnn import DartsCnnSearchConfig
from nasdeploy.search.darts_cnn_loop import load_search_result, run_search
from nasdeploy.spaces.darts_cnn_derive import derive_genotype
from nasdeploy.utils.checkpoint import load_checkpoint
from nasdeploy.utils.yamlconfig import load_config

TINY = ["data.dataset=demo", "data.demo_train_size=32", "model.channels=4", "model.layers=3", "model.steps=2",
        "model.multiplier=2", "search.epochs=1", "search.batch_size=8", "search.eval_images=8",
        "search.threads=1", "search.seed=5", "search.arch_lr=0.05", "model.mixed_op=reference"]


@pytest.mark.parametrize("override, match", [
    ("model.partial_channels=0", r"model.partial_channels must be an integer >= 1"),
    ("model.partial_channels=3", r"model.channels \(4\) must be divisible by model.partial_channels \(3\)"),
    ("model.partial_channels=2.5", r"model.partial_channels must be an integer"),
])
def test_partial_channels_is_checked_at_load(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(DartsCnnSearchConfig, None, TINY + [override])


def test_bad_partial_channels_is_one_error_line_and_exit_2(tmp_path):
    config = Path(__file__).resolve().parents[2] / "configs" / "darts_cnn_demo_search.yaml"  # model.channels: 8
    proc = subprocess.run([sys.executable, "-m", "nasdeploy", "search", "--config", str(config),
                           "--out", str(tmp_path / "run"), "model.partial_channels=3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: model.channels (8) must be divisible by model.partial_channels (3)"]
    assert not (tmp_path / "run").exists()


def test_partial_channel_search_trains_saves_and_derives_with_betas(tmp_path):
    config = load_config(DartsCnnSearchConfig, None, TINY + ["model.partial_channels=2"])
    assert config.model.partial_channels == 2
    result = run_search(config, tmp_path, progress=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")["model"]
    assert state["betas_normal"].shape == state["betas_reduce"].shape == (5,)
    assert torch.equal(result.betas_normal, state["betas_normal"])
    assert state["betas_normal"].abs().max() > 1e-2  # moved away from the 1e-3 * N(0, 1) start (arch lr 0.05)
    expected = derive_genotype(state["alphas_normal"], state["alphas_reduce"], steps=2, multiplier=2,
                               betas_normal=state["betas_normal"], betas_reduce=state["betas_reduce"])
    assert load_genotype(tmp_path / "genotype.json", "cnn_cell") == expected
    loaded = load_search_result(tmp_path)
    assert torch.equal(loaded.betas_reduce, state["betas_reduce"])
