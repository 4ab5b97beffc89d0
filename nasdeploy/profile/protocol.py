"""The latency protocol every backend follows: how to time (config), untimed warm-up then timed runs, statistics.

A lower module of its own so that the backends (profile/backends_*.py) and the dispatcher (profile/latency.py)
share it without importing each other.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from nasdeploy.errors import ConfigError


@dataclass(frozen=True)
class LatencyConfig:
    """How to time: batch size, untimed warm-up runs, timed runs, input size (C, H, W)."""

    batch: int = 1
    warmup: int = 10
    runs: int = 100
    seed: int = 0
    progress: bool = False  # a tqdm bar per backend on stderr (only when it is a terminal)

    def __post_init__(self) -> None:
        for key in ("batch", "runs"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"latency {key} must be a positive integer, got {value!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ConfigError(f"latency warmup must be a non-negative integer, got {self.warmup!r}")


@dataclass(frozen=True)
class LatencyResult:
    """One backend's timing (milliseconds per batch), or why it was skipped or failed."""

    backend: str
    status: str  # "ok" | "skipped" | "error"
    batch: int
    runs: int = 0
    warmup: int = 0
    median_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    throughput: float | None = None  # samples per second: batch / mean time
    settings: dict[str, Any] = field(default_factory=dict)  # threads, providers actually used, device
    note: str = ""

    @property
    def ok(self) -> bool:
        """True when the backend ran and produced timings."""
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {k: getattr(self, k) for k in (
            "backend", "status", "batch", "runs", "warmup", "median_ms", "p90_ms", "p99_ms", "mean_ms",
            "std_ms", "min_ms", "max_ms", "throughput", "settings", "note")}


def summarize(backend: str, times_ms: Sequence[float], cfg: LatencyConfig, settings: dict[str, Any], note: str = "") -> LatencyResult:
    """Statistics of per-run times in milliseconds (percentiles by linear interpolation)."""
    t = np.asarray(times_ms, dtype=np.float64)
    if t.size == 0 or not np.all(np.isfinite(t)):
        return LatencyResult(backend, "error", cfg.batch, note="no valid timings recorded")
    median, p90, p99 = (float(v) for v in np.percentile(t, [50, 90, 99]))
    mean = float(t.mean())
    return LatencyResult(
        backend, "ok", cfg.batch, runs=int(t.size), warmup=cfg.warmup, median_ms=median, p90_ms=p90, p99_ms=p99,
        mean_ms=mean, std_ms=float(t.std()), min_ms=float(t.min()), max_ms=float(t.max()),
        throughput=cfg.batch / (mean / 1000.0) if mean > 0 else math.inf, settings=settings, note=note,
    )


def timed_runs(run_once: Callable[[], float], cfg: LatencyConfig, desc: str) -> list[float]:
    """Call `run_once` (which returns its own time in ms) cfg.warmup times untimed, then cfg.runs times."""
    from tqdm import tqdm

    for _ in range(cfg.warmup):
        run_once()
    return [run_once() for _ in tqdm(range(cfg.runs), desc=desc, leave=False, disable=None if cfg.progress else True)]


def wall_clock_ms(fn: Callable[[], Any]) -> Callable[[], float]:
    """`fn` as a run_once for timed_runs: each call returns fn()'s wall time in ms (time.perf_counter)."""

    def once() -> float:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1000.0

    return once


def skipped(backend: str, cfg: LatencyConfig, why: str, settings: dict[str, Any] | None = None) -> LatencyResult:
    """A result that says why a backend did not run here."""
    return LatencyResult(backend, "skipped", cfg.batch, settings=settings or {}, note=why)
