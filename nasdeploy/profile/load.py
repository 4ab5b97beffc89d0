"""How busy the machine was while latency was measured: load average, other processes' CPU use, steal, frequency.

A latency taken while other processes compete for the cores is not the model's latency (the found network
timed 142.8 ms vs DARTS_V2's 74.0 ms on a busy machine). A LoadMonitor samples /proc/stat (the CPUs this
process may run on), this process's own CPU time, the load average and the CPU frequency at the start, at
every round boundary and at the end of a measurement window; MachineLoad is what it saw and whether the
window was contended (CONTENTION_RULE).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

OTHERS_CORES_LIMIT = 0.25  # other processes using more than a quarter of a core on average compete with us
STEAL_LIMIT = 0.05  # a hypervisor taking more than 5% of the CPU time away
CONTENTION_RULE = (f"contended when, during the measurement, other processes used more than {OTHERS_CORES_LIMIT:g} "
                   f"of a core on average (busy CPU time in /proc/stat minus this process's own) or the hypervisor "
                   f"stole more than {STEAL_LIMIT:.0%} of the CPU time; without /proc/stat: when the 1-minute load "
                   f"average before the measurement exceeded the cores minus one")
PROC_STAT = Path("/proc/stat")
CPUFREQ = Path("/sys/devices/system/cpu")
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuTimes:
    """Jiffies summed over this process's CPUs: busy (user..softirq), idle (idle + iowait), steal."""

    busy: int
    idle: int
    steal: int

    @property
    def total(self) -> int:
        """All jiffies (busy + idle + steal)."""
        return self.busy + self.idle + self.steal


def _allowed_cpus() -> set[int] | None:
    return set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def read_cpu_times(text: str | None = None, cpus: set[int] | None = None) -> CpuTimes | None:
    """The /proc/stat counters of the CPUs in `cpus` (all CPUs when None); None where /proc/stat is missing."""
    if text is None:
        if not PROC_STAT.is_file():
            return None
        text = PROC_STAT.read_text()
    busy = idle = steal = 0
    found = False
    for line in text.splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or not fields:
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        v = [int(f) for f in fields[:8]] + [0] * (8 - len(fields[:8]))
        busy += v[0] + v[1] + v[2] + v[5] + v[6]  # user nice system irq softirq (guest time is inside user)
        idle += v[3] + v[4]
        steal += v[7]
        found = True
    return CpuTimes(busy, idle, steal) if found else None


def read_frequencies_mhz(base: Path = CPUFREQ, cpuinfo: Path = CPUINFO,
                         cpus: set[int] | None = None) -> tuple[list[float], str]:
    """Current CPU frequencies (MHz) of `cpus` from cpufreq's scaling_cur_freq, else /proc/cpuinfo's 'cpu MHz'."""
    out: list[float] = []
    for path in sorted(base.glob("cpu[0-9]*/cpufreq/scaling_cur_freq")):
        cpu = int(path.parent.parent.name[3:])
        if cpus is None or cpu in cpus:
            try:
                out.append(int(path.read_text().strip()) / 1000.0)
            except (OSError, ValueError):
                continue
    if out:
        return out, "scaling_cur_freq"
    if cpuinfo.is_file():
        out = [float(line.split(":", 1)[1]) for line in cpuinfo.read_text(errors="replace").splitlines()
               if line.lower().startswith("cpu mhz")]
        if out:
            return out, "/proc/cpuinfo (static on many virtual machines)"
    return [], "not available"


@dataclass(frozen=True)
class Sample:
    """One reading: wall clock, CPU counters, this process's CPU seconds, load average, frequencies."""

    wall: float
    cpu: CpuTimes | None
    own_cpu_s: float
    loadavg: tuple[float, float, float] | None
    freq_mhz: tuple[float, ...]


def take_sample(cpus: set[int] | None = None) -> Sample:
    """Read the counters now."""
    times = os.times()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    freqs, _ = read_frequencies_mhz(cpus=cpus)
    return Sample(time.monotonic(), read_cpu_times(cpus=cpus), times.user + times.system, load, tuple(freqs))


@dataclass(frozen=True)
class MachineLoad:
    """The machine's load around one measurement window and whether other processes competed (CONTENTION_RULE)."""

    seconds: float
    cores: int
    contended: bool
    others_cores: float | None  # mean cores other processes kept busy during the window
    others_cores_max_round: float | None  # the same over the busiest round of the window
    steal_share: float | None  # share of the CPU time the hypervisor took
    own_cores: float | None  # cores this process used (the timed runs and their threads)
    loadavg_before: tuple[float, float, float] | None
    loadavg_after: tuple[float, float, float] | None
    freq_mhz_before: float | None  # mean over the CPUs
    freq_mhz_after: float | None
    freq_source: str
    rule: str = CONTENTION_RULE

    def line(self) -> str:
        """One line for a report: contended or quiet, and the signals that say so."""
        parts = []
        if self.others_cores is not None:
            parts.append(f"other processes used {self.others_cores:.2f} of {self.cores} cores"
                         + (f" (busiest round {self.others_cores_max_round:.2f})"
                            if self.others_cores_max_round is not None else ""))
        if self.steal_share is not None:
            parts.append(f"steal {self.steal_share:.1%}")
        if self.loadavg_before is not None and self.loadavg_after is not None:
            parts.append(f"load average {self.loadavg_before[0]:.2f} -> {self.loadavg_after[0]:.2f}")
        if self.freq_mhz_before is not None and self.freq_mhz_after is not None:
            parts.append(f"CPU {self.freq_mhz_before:.0f} -> {self.freq_mhz_after:.0f} MHz")
        verdict = "CONTENDED: other processes competed" if self.contended else "quiet"
        return f"{verdict} during the {self.seconds:.1f} s measurement: " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the one-line summary."""
        return {**asdict(self), "line": self.line()}


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _others_cores(a: Sample, b: Sample, hz: int) -> float | None:
    """Cores other processes kept busy between two samples (never below 0: counters tick at 1/HZ)."""
    if a.cpu is None or b.cpu is None or b.wall <= a.wall:
        return None
    busy_s = (b.cpu.busy - a.cpu.busy) / hz
    return max(0.0, (busy_s - (b.own_cpu_s - a.own_cpu_s)) / (b.wall - a.wall))


def summarize_load(samples: Sequence[Sample], cores: int, hz: int, freq_source: str) -> MachineLoad:
    """MachineLoad of a window from its samples (start, round boundaries, end) by CONTENTION_RULE."""
    first, last = samples[0], samples[-1]
    seconds = max(last.wall - first.wall, 0.0)
    others = _others_cores(first, last, hz)
    rounds = [c for c in (_others_cores(a, b, hz) for a, b in zip(samples, samples[1:])) if c is not None]
    steal = None
    if first.cpu is not None and last.cpu is not None and last.cpu.total > first.cpu.total:
        steal = (last.cpu.steal - first.cpu.steal) / (last.cpu.total - first.cpu.total)
    own = (last.own_cpu_s - first.own_cpu_s) / seconds if seconds > 0 else None
    if others is not None:
        contended = others > OTHERS_CORES_LIMIT or (steal or 0.0) > STEAL_LIMIT
    else:
        contended = first.loadavg is not None and first.loadavg[0] > cores - 1
    return MachineLoad(round(seconds, 3), cores, contended, others, max(rounds) if len(rounds) > 1 else None, steal,
                       own, first.loadavg, last.loadavg, _mean(first.freq_mhz), _mean(last.freq_mhz), freq_source)


class LoadMonitor:
    """Samples the machine at the start of a measurement, at each mark() (a round boundary) and at stop()."""

    def __init__(self) -> None:
        self._cpus = _allowed_cpus()
        self._samples: list[Sample] = []

    def start(self) -> None:
        """The first sample (the window opens)."""
        self._samples = [take_sample(self._cpus)]

    def mark(self) -> None:
        """A sample between rounds (outside any timed run)."""
        self._samples.append(take_sample(self._cpus))

    def stop(self) -> MachineLoad:
        """The last sample and the window's MachineLoad."""
        self.mark()
        cores = len(self._cpus) if self._cpus else (os.cpu_count() or 1)
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        return summarize_load(self._samples, cores, hz, read_frequencies_mhz(cpus=self._cpus)[1])
