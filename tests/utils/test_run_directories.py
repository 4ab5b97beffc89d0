"""Run utilities: RNG capture/restore through weights_only checkpoints, config files and overrides."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from nasdeploy.config.darts_cnn import DartsCnnSearchConfig, DartsCnnTrainConfig
from nasdeploy.errors import ConfigError, LimitError
from nasdeploy.utils.checkpoint import load_checkpoint, save_checkpoint
from nasdeploy.utils.rundir import read_json
from nasdeploy.utils.rng import capture_rng_state, restore_rng_state
from nasdeploy.utils.runlog import JsonlLog
from nasdeploy.utils.yamlconfig import apply_overrides, load_config, load_yaml

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _draw():
    return random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(3).tolist()


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leave a cached gaussian in numpy's state
    save_checkpoint(tmp_path / "c.pt", {}, kind="test", rng=capture_rng_state())
    expected = _draw()
    restore_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert _draw() == expected


def test_jsonl_log_rewind_drops_later_epochs_and_torn_lines(tmp_path):
    log = JsonlLog(tmp_path / "log.jsonl")
    for e in (1, 2, 3):
        log.write({"epoch": e})
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"epoch": 4, "tor')
    log.rewind(lambda r: r["epoch"] <= 2)
    assert log.read() == [{"epoch": 1}, {"epoch": 2}]


def test_run_logs_and_records_are_read_within_the_limits(tmp_path):
    log = JsonlLog(tmp_path / "log.jsonl")
    log.write({"epoch": 1})
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write("[1, 2]\n")  # not a record: skipped like a torn line
    assert log.read() == [{"epoch": 1}]
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write("[" * 10_000 + "]" * 10_000 + "\n")  # a planted line would exhaust the parser's stack
    with pytest.raises(LimitError, match="nesting_depth"):
        log.read()
    (tmp_path / "done.json").write_text("[]")
    assert read_json(tmp_path / "done.json") is None
    (tmp_path / "done.json").write_text("{" * 10_000)
    with pytest.raises(LimitError, match="nesting_depth"):
        read_json(tmp_path / "done.json")


def test_published_configs_hold_the_reference_hyperparameters():
    s = load_config(DartsCnnSearchConfig, CONFIGS / "darts_cnn_cifar10_search.yaml")
    assert (s.model.channels, s.model.layers, s.model.steps, s.model.multiplier, s.model.stem_multiplier) == (16, 8, 4, 4, 3)
    o = s.search
    assert (o.epochs, o.batch_size, o.lr, o.lr_min, o.momentum, o.weight_decay, o.grad_clip) == (50, 64, 0.025, 0.001, 0.9, 3e-4, 5.0)
    assert (o.arch_lr, o.arch_betas, o.arch_weight_decay, o.train_portion) == (3e-4, (0.5, 0.999), 1e-3, 0.5)
    t = load_config(DartsCnnTrainConfig, CONFIGS / "darts_cnn_cifar10_train.yaml")
    assert (t.model.channels, t.model.layers, t.model.auxiliary, t.data.cutout) == (36, 20, True, 16)
    r = t.train
    assert (r.epochs, r.batch_size, r.lr, r.lr_schedule, r.weight_decay, r.auxiliary_weight, r.drop_path_prob, r.grad_clip) == (
        600, 96, 0.025, "cosine", 3e-4, 0.4, 0.2, 5.0)
    i = load_config(DartsCnnTrainConfig, CONFIGS / "darts_cnn_imagenet_mobile_train.yaml")
    assert (i.model.net, i.model.channels, i.model.layers, i.data.image_size, i.data.dataset) == ("imagenet", 48, 14, 224, "imagefolder")
    r = i.train
    assert (r.epochs, r.batch_size, r.lr, r.lr_schedule, r.lr_gamma, r.weight_decay, r.label_smoothing, r.auxiliary_weight) == (
        250, 128, 0.1, "exponential", 0.97, 3e-5, 0.1, 0.4)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_config_file_validates(name):
    """Every shipped config loads through its family's validating loader."""
    path = CONFIGS / name
    data = load_yaml(path)
    if name.startswith("pipeline_") or {"search", "train"} <= set(data):  # a pipeline file has both stages
        from nasdeploy.pipeline.config import load_pipeline_config

        cfg = load_pipeline_config(path)
        search, train = cfg.search, cfg.train
        expected = {"darts_cnn": ("DartsCnnSearchConfig", "DartsCnnTrainConfig"), "autodeeplab": ("AutoDeepLabSearchConfig", "AutoDeepLabTrainConfig"),
                    "darts_rnn": ("DartsRnnSearchConfig", "DartsRnnTrainConfig")}[cfg.space]
        assert (type(search).__name__, type(train).__name__) == expected
    else:  # a search or training config of the space its `space:` (or its sections) names
        from nasdeploy.spaces.table import space_of_config

        space = space_of_config(data)
        config = (space.load_search_config if "search" in data else space.load_train_config)(data)
        assert type(config).__module__ == f"nasdeploy.config.{space.name}"
        assert isinstance(load_config(type(config), path), type(config))


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(DartsCnnSearchConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("search: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line"):
        load_config(DartsCnnSearchConfig, bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(DartsCnnSearchConfig, bad)
    bad.write_text("serch:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match="unknown config key 'serch'; did you mean 'search'"):
        load_config(DartsCnnSearchConfig, bad)


def test_overrides():
    data = apply_overrides({"search": {"epochs": 50}}, ["search.epochs=2", "model.channels=8", "search.arch_betas=[0.9, 0.99]"])
    assert data == {"search": {"epochs": 2, "arch_betas": [0.9, 0.99]}, "model": {"channels": 8}}
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["search.epochs"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"search": 3}, ["search.epochs=2"])
