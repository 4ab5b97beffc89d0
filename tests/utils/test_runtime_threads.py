"""threads: auto = the cores idle when a run starts; config validation of the threads setting."""

from __future__ import annotations

import itertools

import pytest
import torch

from nasdeploy.errors import ConfigError
from nasdeploy.utils import runtime


def _fake_proc_stat(monkeypatch: pytest.MonkeyPatch, cpus: int, idle_fraction: float) -> None:
    # Two /proc/stat samples 1000 jiffies apart per CPU, `idle_fraction` of them idle.
    samples = itertools.cycle([(0, 0), (int(1000 * cpus * idle_fraction), 1000 * cpus)])
    monkeypatch.setattr(runtime, "_cpu_jiffies", lambda: next(samples))
    monkeypatch.setattr(runtime, "usable_cores", lambda: cpus)
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: cpus)
    monkeypatch.setattr(runtime.time, "sleep", lambda s: None)


@pytest.mark.parametrize("idle_fraction, expected", [(1.0, 2), (0.5, 1), (0.02, 1), (0.8, 2)])
def test_auto_threads_follow_the_idle_cores(monkeypatch: pytest.MonkeyPatch, idle_fraction: float, expected: int) -> None:
    _fake_proc_stat(monkeypatch, cpus=2, idle_fraction=idle_fraction)
    assert runtime.resolve_threads("auto") == expected


def test_auto_threads_without_proc_use_the_load_average(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_cpu_jiffies", lambda: None)
    monkeypatch.setattr(runtime, "usable_cores", lambda: 8)
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (5.2, 5.0, 5.0))
    assert runtime.resolve_threads("auto") == 3


def test_runtime_settings_sets_and_restores_threads() -> None:
    before = torch.get_num_threads()
    with runtime.runtime_settings(threads=1) as count:
        assert count == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before
    assert runtime.resolve_threads(None) is None and runtime.resolve_threads(3) == 3


@pytest.mark.parametrize("bad", [0, -2, "many", True, 1.5])
def test_bad_threads_are_refused_by_the_configs(bad: object) -> None:
    from nasdeploy.config.darts_cnn import DartsCnnSearchConfig, DartsCnnTrainConfig
    from nasdeploy.utils.yamlconfig import from_dict

    with pytest.raises(ConfigError, match="threads"):
        from_dict(DartsCnnSearchConfig, {"search": {"threads": bad}})
    with pytest.raises(ConfigError, match="threads"):
        from_dict(DartsCnnTrainConfig, {"train": {"threads": bad}})


def test_configs_accept_auto() -> None:
    from nasdeploy.config.darts_cnn import DartsCnnSearchConfig, DartsCnnTrainConfig
    from nasdeploy.config.darts_rnn import DartsRnnSearchConfig
    from nasdeploy.utils.yamlconfig import from_dict

    assert from_dict(DartsCnnSearchConfig, {"search": {"threads": "auto"}}).search.threads == "auto"
    assert from_dict(DartsCnnTrainConfig, {"train": {"threads": "auto"}}).train.threads == "auto"
    assert from_dict(DartsRnnSearchConfig, {"search": {"threads": "auto"}}).search.threads == "auto"
