"""threads: auto = the physical cores the process may use, whatever the load; config validation of the threads setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nasdeploy.errors import ConfigError
from nasdeploy.utils import runtime


class FakeMachine:
    """A machine's /proc and /sys files as `runtime._read` sees them, with a load that can be changed."""

    def __init__(self, cpus: int, siblings: int = 1, quota: str | None = None):
        self.cpus, self.siblings, self.quota = cpus, siblings, quota
        self.load = 0.0

    def read(self, path: Path) -> str | None:
        text = str(path)
        if text == "/proc/loadavg":
            return f"{self.load:.2f} {self.load:.2f} {self.load:.2f} 3/200 1234"
        if text == "/proc/stat":  # busy jiffies grow with the load
            busy = int(1000 * self.load)
            return f"cpu  {busy} 0 {busy} {max(0, 1000 * self.cpus - 2 * busy)} 0 0 0 0 0 0"
        if text == "/proc/self/cgroup":
            return "0::/job"
        if text == "/sys/fs/cgroup/job/cpu.max":
            return self.quota
        if text.endswith("/topology/physical_package_id"):
            return "0"
        if text.endswith("/topology/core_id"):
            return str(int(path.parent.parent.name[3:]) // self.siblings)
        return None


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> FakeMachine:
    fake = FakeMachine(cpus=8)
    monkeypatch.setattr(runtime, "_read", fake.read)
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(fake.cpus)))
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (fake.load,) * 3)
    return fake


def test_auto_threads_do_not_follow_the_load(machine: FakeMachine) -> None:
    counts = []
    for load in (0.0, 3.5, 7.9, 40.0):
        machine.load = load
        counts.append(runtime.resolve_threads("auto"))
    assert counts == [8] * 4


def test_auto_threads_follow_affinity_hyperthreads_and_quota(machine: FakeMachine,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert runtime.auto_threads() == 8
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 2, 5})  # taskset / cpuset
    assert runtime.auto_threads() == 3
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(8)))
    machine.siblings = 2  # 8 logical CPUs on 4 cores
    assert runtime.auto_threads() == 4
    machine.quota = "250000 100000"  # a 2.5-CPU cgroup quota
    assert runtime.auto_threads() == 2 and runtime.auto_threads(share=2) == 1
    machine.quota = "max 100000"
    assert runtime.auto_threads() == 4 and runtime.auto_threads(share=3) == 1


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
