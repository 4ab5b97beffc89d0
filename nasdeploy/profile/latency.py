"""Latency measurement: backend names, config, timing statistics and the dispatcher."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from torch import nn

from nasdeploy.errors import ConfigError, NasDeployError

CPU_BACKENDS = ("torch-cpu", "torch-cpu-1t", "ort-cpu", "ort-cpu-1t")
GPU_BACKENDS = ("torch-cuda", "torch-cuda-graph", "ort-cuda", "ort-trt")
BACKENDS = CPU_BACKENDS + GPU_BACKENDS
BACKEND_GROUPS: dict[str, tuple[str, ...]] = {
    "none": (),
    "cpu": CPU_BACKENDS,
    "gpu": GPU_BACKENDS,
    "all": BACKENDS,
    "mobile": ("torch-cpu-1t", "ort-cpu-1t"),
}
# onnxruntime static INT8 (QDQ, per-channel weights) of the model's ONNX, timed like ort-cpu-1t.
ORT_INT8_BACKENDS = ("ort-int8-cpu-1t",)
ORT_BACKENDS = frozenset({"ort-cpu", "ort-cpu-1t", "ort-cuda", "ort-trt", *ORT_INT8_BACKENDS})
# ExecuTorch (extra 'executorch'): the model lowered to an XNNPACK .pte, float and PT2E INT8 (threads: reported).
EXECUTORCH_BACKENDS = ("executorch-fp32", "executorch-int8")
BACKENDS = BACKENDS + EXECUTORCH_BACKENDS + ORT_INT8_BACKENDS
BACKEND_GROUPS["executorch"] = EXECUTORCH_BACKENDS
BACKEND_GROUPS["all"] = BACKENDS
# An INT8 method (as export.int8 / profile.int8 name it) -> its latency backend and that backend's float twin.
INT8_LATENCY_BACKENDS: dict[str, str] = {"ort": "ort-int8-cpu-1t", "executorch": "executorch-int8"}
FLOAT_TWIN: dict[str, str] = {"ort-int8-cpu-1t": "ort-cpu-1t", "executorch-int8": "executorch-fp32"}
BACKEND_GROUPS["int8"] = tuple(INT8_LATENCY_BACKENDS.values())


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


def parse_backends(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """Backend names from 'torch-cpu,ort-cpu-1t', group names (cpu, gpu, mobile, all, none) or a list."""
    if spec is None:
        return ()
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        names = BACKEND_GROUPS.get(item, (item,))
        for name in names:
            if name not in BACKENDS:
                raise ConfigError(
                    f"unknown latency backend '{name}'; choose from {', '.join(BACKENDS)} or a group ({', '.join(BACKEND_GROUPS)})"
                )
            if name not in out:
                out.append(name)
    return tuple(out)


Runner = Callable[[nn.Module | None, Path | None, tuple[int, ...], LatencyConfig], LatencyResult]


def _runners() -> dict[str, Runner]:
    from nasdeploy.profile import backends_executorch, backends_ort, backends_torch

    return {
        "executorch-fp32": backends_executorch.executorch_float,
        "executorch-int8": backends_executorch.executorch_int8,
        "torch-cpu": backends_torch.torch_cpu,
        "torch-cpu-1t": backends_torch.torch_cpu_1t,
        "torch-cuda": backends_torch.torch_cuda,
        "torch-cuda-graph": backends_torch.torch_cuda_graph,
        "ort-cpu": backends_ort.ort_cpu,
        "ort-cpu-1t": backends_ort.ort_cpu_1t,
        "ort-int8-cpu-1t": backends_ort.ort_int8_cpu_1t,
        "ort-cuda": backends_ort.ort_cuda,
        "ort-trt": backends_ort.ort_trt,
    }


def measure_latency(
    backends: Sequence[str],
    input_shape: tuple[int, ...],
    cfg: LatencyConfig,
    *,
    model: nn.Module | None = None,
    onnx_path: str | Path | None = None,
) -> dict[str, LatencyResult]:
    """Time each backend; torch backends need `model`, onnxruntime backends need `onnx_path`.

    A backend that cannot run here (no GPU, provider missing) is 'skipped' with the reason; one that
    fails is 'error' with the first line of the failure, so one bad backend never hides the others.
    """
    runners = _runners()
    results: dict[str, LatencyResult] = {}
    for name in parse_backends(list(backends)):
        if name in ORT_BACKENDS and onnx_path is None:
            results[name] = skipped(name, cfg, "needs an ONNX file")
            continue
        if name not in ORT_BACKENDS and model is None:
            results[name] = skipped(name, cfg, "needs a PyTorch model (an .onnx target has none)")
            continue
        try:
            results[name] = runners[name](model, Path(onnx_path) if onnx_path else None, tuple(input_shape), cfg)
        except NasDeployError as exc:
            results[name] = LatencyResult(name, "error", cfg.batch, note=str(exc))
        except Exception as exc:  # a runtime failure in one backend must not hide the others
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            results[name] = LatencyResult(name, "error", cfg.batch, note=f"{type(exc).__name__}: {first}")
    return results


def time_model_file(backend: str, path: str | os.PathLike[str], input_shape: tuple[int, int, int], *,
                    warmup: int = 5, runs: int = 30, seed: int = 0) -> dict[str, Any]:
    """Latency of an exported file with the profiler's protocol: .onnx in onnxruntime (ort-cpu-1t), .pte in ExecuTorch."""
    cfg = LatencyConfig(batch=1, warmup=warmup, runs=runs, seed=seed)
    if backend == "ort-cpu-1t":
        from nasdeploy.profile.backends_ort import ort_cpu_1t

        return ort_cpu_1t(None, Path(path), input_shape, cfg).to_dict()
    from nasdeploy.profile.backends_executorch import time_pte

    return time_pte(backend, Path(path), input_shape, cfg).to_dict()
