"""Process-wide torch settings for one run, restored afterwards (determinism, CPU threads)."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator

import torch

from nasdeploy.utils.checks import Threads, check_threads


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpu_jiffies() -> tuple[int, int] | None:
    """(idle, total) jiffies summed over all CPUs, from /proc/stat; None where there is no /proc."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return idle, sum(fields[:8])  # guest time is already inside user/nice


def idle_cores(sample_s: float = 0.3) -> float:
    """How many cores sat idle over the next `sample_s` seconds (/proc/stat; else from the load average)."""
    cores = usable_cores()
    before = _cpu_jiffies()
    if before is not None:
        time.sleep(sample_s)
        after = _cpu_jiffies()
        if after is not None and after[1] > before[1]:
            total_cpus = os.cpu_count() or cores
            idle = (after[0] - before[0]) / (after[1] - before[1]) * total_cpus
            return max(0.0, min(float(cores), idle))
    try:
        return max(0.0, cores - os.getloadavg()[0])
    except OSError:
        return float(cores)


def resolve_threads(threads: Threads) -> int | None:
    """The thread count a setting means; "auto" = the idle cores (at least 1).

    On a busy machine OpenMP threads that share a core spin-wait on each other: a DARTS search step with two
    threads ran 10x slower than with one when the other core was taken (measured), and 1.5x faster when it was free.
    """
    check_threads("run", threads)
    if threads == "auto":
        return max(1, min(usable_cores(), int(idle_cores() + 0.5)))
    return threads


@contextlib.contextmanager
def runtime_settings(deterministic: bool = False, threads: Threads = None) -> Iterator[int]:
    """Enable deterministic algorithms and/or set the CPU thread count for the duration of a run; yields the count."""
    previous_det = torch.are_deterministic_algorithms_enabled()
    previous_threads = torch.get_num_threads()
    count = resolve_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True)
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield torch.get_num_threads()
    finally:
        torch.use_deterministic_algorithms(previous_det)
        torch.set_num_threads(previous_threads)
