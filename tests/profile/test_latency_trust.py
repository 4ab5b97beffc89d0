"""Latency you can trust: compared models timed in turns, the machine's load recorded, contention flagged."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import nasdeploy.profile.latency as latency
from nasdeploy.profile.load import (
    OTHERS_CORES_LIMIT,
    CpuTimes,
    MachineLoad,
    Sample,
    read_cpu_times,
    read_frequencies_mhz,
    summarize_load,
)
from nasdeploy.profile.protocol import LatencyConfig, Prepared, run_alternated


class _Clock:
    """A fake timer: each run records its key and returns a fixed time."""

    def __init__(self):
        self.calls: list[str] = []

    def prepared(self, key: str, ms: float = 1.0) -> Prepared:
        def once() -> float:
            self.calls.append(key)
            return ms
        return Prepared(once, {"fake": key})


class _QuietMonitor:
    """A LoadMonitor stand-in that counts its samples."""

    def __init__(self):
        self.marks = 0

    def start(self):
        self.marks = 1

    def mark(self):
        self.marks += 1

    def stop(self) -> MachineLoad:
        self.mark()
        return MachineLoad(1.0, 2, False, 0.0, None, 0.0, 1.0, None, None, None, None, "none")


def test_runs_alternate_in_blocks_and_warmups_alternate_one_by_one():
    clock, monitor = _Clock(), _QuietMonitor()
    window = run_alternated({"A": clock.prepared("A"), "B": clock.prepared("B", 2.0)},
                            LatencyConfig(warmup=2, runs=7, block=3), monitor)
    assert clock.calls[:4] == ["A", "B", "A", "B"]  # warm-up
    timed = clock.calls[4:]
    assert [k for k, _ in itertools.groupby(timed)] == ["A", "B", "A", "B", "A", "B"]
    assert [len(list(g)) for _, g in itertools.groupby(timed)] == [3, 3, 3, 3, 1, 1]
    assert window.times == {"A": [1.0] * 7, "B": [2.0] * 7} and window.errors == {}
    assert monitor.marks == 1 + 3 + 1  # start, one sample per round, stop


def test_a_failing_measurement_stops_alone():
    clock = _Clock()
    calls = iter(range(100))

    def flaky() -> float:
        if next(calls) == 3:
            raise RuntimeError("device lost\nmore")
        return 5.0

    window = run_alternated({"A": clock.prepared("A"), "bad": Prepared(flaky, {})}, LatencyConfig(warmup=0, runs=6, block=2),
                            _QuietMonitor())
    assert window.errors == {"bad": "RuntimeError: device lost"} and len(window.times["A"]) == 6


def test_compare_latency_alternates_models_and_records_it(monkeypatch):
    clock = _Clock()

    def fake(model, onnx_path, shape, cfg):
        return clock.prepared(model.label)

    monkeypatch.setitem(latency.RUNNERS, "torch-cpu-1t", fake)
    a, b = nn.Identity(), nn.Identity()
    a.label, b.label = "found", "DARTS_V2"
    cfg = LatencyConfig(warmup=0, runs=4, block=2)
    out = latency.compare_latency([latency.LatencySubject("found", ("torch-cpu-1t",), a),
                                   latency.LatencySubject("DARTS_V2", ("torch-cpu-1t", "ort-cpu-1t"), b)], (3, 8, 8), cfg)
    assert clock.calls == ["found", "found", "DARTS_V2", "DARTS_V2"] * 2
    found, darts = out["found"]["torch-cpu-1t"], out["DARTS_V2"]["torch-cpu-1t"]
    assert found.ok and found.runs == 4 and found.alternated_with == ("DARTS_V2: torch-cpu-1t",)
    assert out["DARTS_V2"]["ort-cpu-1t"].status == "skipped"  # no ONNX file: said, not timed
    assert found.load is not None and found.load is darts.load  # one window, one load record


def test_every_record_carries_the_load_signals():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    res = latency.measure_latency(["torch-cpu-1t"], (3, 8, 8), LatencyConfig(warmup=1, runs=3, block=2),
                                  model=model)["torch-cpu-1t"]
    d = res.to_dict()
    assert res.ok and isinstance(d["contended"], bool) and d["load_line"].split(":")[0] in (
        "quiet during the " + f"{res.load.seconds:.1f} s measurement", "CONTENDED")
    load = d["load"]
    for key in ("loadavg_before", "loadavg_after", "others_cores", "steal_share", "freq_mhz_before", "cores", "rule"):
        assert key in load
    assert load["seconds"] >= 0 and load["cores"] >= 1 and "other processes used more than" in load["rule"]


STAT = """cpu  100 0 50 1000 10 0 5 7 0 0
cpu0 60 0 30 500 5 0 3 4 0 0
cpu1 40 0 20 500 5 0 2 3 0 0
intr 1 2 3
"""


def test_proc_stat_counters_of_our_cpus():
    both = read_cpu_times(STAT)
    assert both == CpuTimes(busy=60 + 30 + 3 + 40 + 20 + 2, idle=505 + 505, steal=7)
    assert read_cpu_times(STAT, cpus={1}) == CpuTimes(busy=62, idle=505, steal=3)
    assert read_cpu_times("intr 1 2 3\n") is None


def _sample(wall, busy, idle, steal, own, load=(0.5, 0.5, 0.5)) -> Sample:
    return Sample(wall, CpuTimes(busy, idle, steal), own, load, (2600.0, 2600.0))


@pytest.mark.parametrize("other_busy_s, steal, contended", [
    (0.1, 0, False),  # others used 0.1 core over 1 s: quiet
    (OTHERS_CORES_LIMIT + 0.2, 0, True),
    (0.0, 12, True),  # the hypervisor took 12% of the window's CPU time
])
def test_contention_rule_from_mocked_proc_readings(other_busy_s, steal, contended):
    hz = 100
    own_s = 1.0  # we kept one core busy for the 1 s window
    busy = int(round((own_s + other_busy_s) * hz))
    start = _sample(10.0, 1000, 5000, 0, 3.0)
    end = _sample(11.0, 1000 + busy, 5000 + (200 - busy - steal), steal, 3.0 + own_s)
    load = summarize_load([start, end], cores=2, hz=hz, freq_source="test")
    assert load.contended is contended
    assert load.others_cores == pytest.approx(other_busy_s, abs=1e-9)
    assert load.steal_share == pytest.approx(steal / 200)
    assert load.own_cores == pytest.approx(1.0)
    assert ("CONTENDED" in load.line()) is contended


def test_without_proc_stat_the_load_average_decides():
    quiet = Sample(0.0, None, 0.0, (0.4, 0.4, 0.4), ())
    busy = Sample(0.0, None, 0.0, (3.5, 3.0, 2.0), ())
    end = Sample(1.0, None, 1.0, (1.0, 1.0, 1.0), ())
    assert not summarize_load([quiet, end], 2, 100, "x").contended
    assert summarize_load([busy, end], 2, 100, "x").contended


def test_frequencies_from_sysfs_else_cpuinfo(tmp_path):
    for cpu, khz in ((0, 2_000_000), (1, 3_000_000), (2, 1_000_000)):
        d = tmp_path / "sys" / f"cpu{cpu}" / "cpufreq"
        d.mkdir(parents=True)
        (d / "scaling_cur_freq").write_text(f"{khz}\n")
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\ncpu MHz\t\t: 2600.000\nprocessor : 1\ncpu MHz\t\t: 2400.000\n")
    assert read_frequencies_mhz(tmp_path / "sys", info, cpus={0, 1}) == ([2000.0, 3000.0], "scaling_cur_freq")
    freqs, source = read_frequencies_mhz(tmp_path / "none", info)
    assert freqs == [2600.0, 2400.0] and source.startswith("/proc/cpuinfo")


def test_torch_threads_are_set_per_run_when_alternating():
    model = nn.Linear(4, 2).eval()
    seen = []
    model.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    prepared = latency.RUNNERS["torch-cpu-1t"](model, None, (4,), LatencyConfig())
    prepared.run_once()
    assert seen == [1] and prepared.settings["intra_op_threads"] == 1 and torch.get_num_threads() == before


def test_profile_targets_times_the_compared_networks_in_turns(monkeypatch):
    from nasdeploy.profile.api import profile_targets
    from nasdeploy.profile.report.table import render_report

    clock = _Clock()

    def fake(model, onnx_path, shape, cfg):
        return clock.prepared(model.genotype.name)

    monkeypatch.setitem(latency.RUNNERS, "torch-cpu-1t", fake)
    results = profile_targets(["DARTS_V1", "DARTS_V2"], net="cifar", channels=4, layers=1, latency="torch-cpu-1t",
                              latency_config=LatencyConfig(warmup=1, runs=3, block=1))
    assert clock.calls == ["DARTS_V1", "DARTS_V2"] * 4  # one warm-up, then three turns
    v1, v2 = (r.latency["torch-cpu-1t"] for r in results)
    assert v1.alternated_with == ("DARTS_V2: torch-cpu-1t",) and v2.alternated_with == ("DARTS_V1: torch-cpu-1t",)
    assert v1.load is v2.load
    text = render_report(results)
    assert "Timed in turns (A B A B ...) with DARTS_V2: torch-cpu-1t." in text
    assert f"Machine: {v1.load.line()}." in text
