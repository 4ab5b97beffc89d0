"""Process-wide torch settings for one run, restored afterwards (determinism, CPU threads).

`threads: auto` is a function of the machine alone, never of its load: the physical cores among the CPUs
this process may run on (its affinity mask), capped by the CPU quota of its cgroup. The same command on the
same machine therefore always runs with the same thread count, and so finds the same cell: a count taken
from the cores idle at the start (the earlier rule) changed with whatever else ran, and with it the float
reduction order and the genotype. A machine shared with other jobs should set a count (`threads: 1`): two
OpenMP threads sharing a busy core spin-wait on each other (a search step ran 10x slower, measured).
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Iterator

import torch

from nasdeploy.utils.checks import Threads, check_threads

_SYS_CPU = Path("/sys/devices/system/cpu")
_CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    """A small system file's text, or None where it cannot be read."""
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def allowed_cpus() -> set[int]:
    """The logical CPUs this process may run on (its affinity mask)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int]) -> int:
    """How many physical cores the logical `cpus` span (hyperthread siblings count once)."""
    cores = set()
    for cpu in cpus:
        topology = _SYS_CPU / f"cpu{cpu}" / "topology"
        package, core = _read(topology / "physical_package_id"), _read(topology / "core_id")
        cores.add((package, core) if package is not None and core is not None else ("cpu", str(cpu)))
    return max(1, len(cores))


def cgroup_cpu_limit() -> float | None:
    """The CPUs the process's cgroup quota allows (cgroup v2 cpu.max or v1 cfs quota); None when unlimited."""
    for group in _own_cgroups():
        v2 = (_read(_CGROUP_ROOT / group / "cpu.max") or "").split()
        if len(v2) == 2:
            return _cpus(*v2)
        for controller in ("cpu", "cpu,cpuacct"):
            folder = _CGROUP_ROOT / controller / group
            limit = _cpus(_read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us"))
            if limit is not None:
                return limit
    return None


def _cpus(quota: str | None, period: str | None) -> float | None:
    """quota / period, or None for no limit ("max", -1) or unreadable values."""
    try:
        q, p = int(quota or ""), int(period or "")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _own_cgroups() -> list[str]:
    """The process's cgroup paths (relative, from /proc/self/cgroup), then the root's."""
    groups = []
    for line in (_read(Path("/proc/self/cgroup")) or "").splitlines():
        path = line.split(":", 2)[-1].strip("/")
        if path and path not in groups:
            groups.append(path)
    return [*groups, ""]


def auto_threads(share: int = 1) -> int:
    """The thread count `threads: auto` means: the physical cores available to the process, over `share` runs.

    `share` splits them between runs started side by side (e.g. parallel searches of several seeds).
    """
    cores = physical_cores(allowed_cpus())
    quota = cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores // max(1, share))


def resolve_threads(threads: Threads) -> int | None:
    """The thread count a setting means: a count as given, "auto" = auto_threads(), None = torch's default."""
    check_threads("run", threads)
    if threads == "auto":
        return auto_threads()
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
