"""The latency protocol every backend follows: how to time (config), untimed warm-up then timed runs, statistics.

A backend prepares a measurement (Prepared: one timed run and its settings); run_alternated times several
prepared measurements in turns of cfg.block runs each (A B A B ..., not all of A then all of B), so that a
change of load or CPU clock during the window touches every compared model alike, and records the machine's
load around the window (nasdeploy.profile.load). A lower module of its own so that the backends
(profile/backends_*.py) and the dispatcher (profile/latency.py) share it without importing each other.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from nasdeploy.errors import ConfigError
from nasdeploy.profile.load import LoadMonitor, MachineLoad


@dataclass(frozen=True)
class LatencyConfig:
    """How to time: batch size, untimed warm-up runs, timed runs, input size (C, H, W)."""

    batch: int = 1
    warmup: int = 10
    runs: int = 100
    seed: int = 0
    progress: bool = False  # a tqdm bar per backend on stderr (only when it is a terminal)
    block: int = 10  # timed runs of one model per turn when several are compared (A B A B ...)

    def __post_init__(self) -> None:
        for key in ("batch", "runs", "block"):
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
    load: MachineLoad | None = None  # the machine around the measurement window (None: not measured)
    alternated_with: tuple[str, ...] = ()  # the other measurements timed in turns within the same window

    @property
    def ok(self) -> bool:
        """True when the backend ran and produced timings."""
        return self.status == "ok"

    @property
    def contended(self) -> bool | None:
        """Whether other processes competed during the measurement (None: load not measured)."""
        return self.load.contended if self.load is not None else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, with the load around the measurement and its one-line verdict."""
        out = {k: getattr(self, k) for k in (
            "backend", "status", "batch", "runs", "warmup", "median_ms", "p90_ms", "p99_ms", "mean_ms",
            "std_ms", "min_ms", "max_ms", "throughput", "settings", "note")}
        out.update(contended=self.contended, load=self.load.to_dict() if self.load is not None else None,
                   load_line=self.load.line() if self.load is not None else None,
                   alternated_with=list(self.alternated_with))
        return out


def summarize(backend: str, times_ms: Sequence[float], cfg: LatencyConfig, settings: dict[str, Any], note: str = "",
              load: MachineLoad | None = None, alternated_with: Sequence[str] = ()) -> LatencyResult:
    """Statistics of per-run times in milliseconds (percentiles by linear interpolation)."""
    t = np.asarray(times_ms, dtype=np.float64)
    if t.size == 0 or not np.all(np.isfinite(t)):
        return LatencyResult(backend, "error", cfg.batch, note="no valid timings recorded", load=load)
    median, p90, p99 = (float(v) for v in np.percentile(t, [50, 90, 99]))
    mean = float(t.mean())
    return LatencyResult(
        backend, "ok", cfg.batch, runs=int(t.size), warmup=cfg.warmup, median_ms=median, p90_ms=p90, p99_ms=p99,
        mean_ms=mean, std_ms=float(t.std()), min_ms=float(t.min()), max_ms=float(t.max()),
        throughput=cfg.batch / (mean / 1000.0) if mean > 0 else math.inf, settings=settings, note=note,
        load=load, alternated_with=tuple(alternated_with),
    )


@dataclass(frozen=True)
class Prepared:
    """A measurement ready to run: one timed run (returns its own time in ms), its settings, a note."""

    run_once: Callable[[], float]
    settings: dict[str, Any]
    note: str = ""
    close: Callable[[], None] | None = None  # releases what the runs need (temporary files), after timing


@dataclass(frozen=True)
class Window:
    """What one alternated measurement window gave: run times (ms) per key, failures, the machine's load."""

    times: dict[str, list[float]]
    errors: dict[str, str]  # key -> first line of the exception that stopped its runs
    load: MachineLoad


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def run_alternated(prepared: Mapping[str, Prepared], cfg: LatencyConfig, monitor: LoadMonitor | None = None) -> Window:
    """Time every prepared measurement cfg.runs times in turns of cfg.block runs (A B A B ...).

    Warm-up runs alternate too, one at a time. The monitor samples the machine at the start, between turns
    (never inside a timed run) and at the end. A measurement that raises stops (its error is kept); the
    others go on.
    """
    from tqdm import tqdm

    monitor = monitor or LoadMonitor()
    active = list(prepared)
    times: dict[str, list[float]] = {key: [] for key in active}
    errors: dict[str, str] = {}

    def turn(key: str, runs: int, record: bool) -> None:
        try:
            for _ in range(runs):
                t = prepared[key].run_once()
                if record:
                    times[key].append(t)
        except Exception as exc:  # one failing runtime must not hide the others
            errors[key] = _first_line(exc)
            active.remove(key)

    for _ in range(cfg.warmup):
        for key in list(active):
            turn(key, 1, record=False)
    bar = tqdm(total=cfg.runs * len(active), desc=", ".join(active), leave=False, disable=None if cfg.progress else True)
    monitor.start()
    for start in range(0, cfg.runs, cfg.block):
        runs = min(cfg.block, cfg.runs - start)
        for key in list(active):
            turn(key, runs, record=True)
            bar.update(runs)
        monitor.mark()
    bar.close()
    return Window(times, errors, monitor.stop())


def close_all(prepared: Sequence[Prepared]) -> None:
    """Release what each prepared measurement held (after its runs)."""
    for p in prepared:
        if p.close is not None:
            p.close()


def measure_prepared(name: str, prepared: Prepared, cfg: LatencyConfig) -> LatencyResult:
    """One prepared measurement on its own: timed, summarised with the load around it, then closed."""
    try:
        window = run_alternated({name: prepared}, cfg)
    finally:
        close_all([prepared])
    if name in window.errors:
        return LatencyResult(name, "error", cfg.batch, note=window.errors[name], load=window.load)
    return summarize(name, window.times[name], cfg, prepared.settings, prepared.note, window.load)


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
