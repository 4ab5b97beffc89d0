"""Latency backends by name (groups, INT8 twins) and the dispatcher that times models or given model files.

The protocol itself (config, warm-up and timed runs in alternating turns, statistics, the machine's load) is
nasdeploy.profile.protocol; the backends (profile/backends_*.py) prepare measurements for it and import only
that module, never this one. Everything compared in one call (backends of one model, several models, a
float file and its INT8 twin) is prepared first and then timed in turns within one window.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from nasdeploy.errors import ConfigError, NasDeployError
from nasdeploy.export.formats import INT8_METHODS
from nasdeploy.profile.backends_executorch import executorch_float, executorch_int8, time_pte
from nasdeploy.profile.backends_ort import ort_cpu, ort_cpu_1t, ort_cuda, ort_int8_cpu_1t, ort_trt, time_int8_onnx
from nasdeploy.profile.backends_torch import torch_cpu, torch_cpu_1t, torch_cuda, torch_cuda_graph
from nasdeploy.profile.protocol import (
    LatencyConfig,
    LatencyResult,
    Prepared,
    close_all,
    measure_prepared,
    run_alternated,
    skipped,
    summarize,
)

CPU_BACKENDS = ("torch-cpu", "torch-cpu-1t", "ort-cpu", "ort-cpu-1t")
GPU_BACKENDS = ("torch-cuda", "torch-cuda-graph", "ort-cuda", "ort-trt")
# onnxruntime static INT8 (QDQ, per-channel weights) of the model's ONNX, timed like ort-cpu-1t.
ORT_INT8_BACKENDS = ("ort-int8-cpu-1t",)
ORT_BACKENDS = frozenset({"ort-cpu", "ort-cpu-1t", "ort-cuda", "ort-trt", *ORT_INT8_BACKENDS})
# ExecuTorch (extra 'executorch'): the model lowered to an XNNPACK .pte, float and PT2E INT8 (threads: reported).
EXECUTORCH_BACKENDS = ("executorch-fp32", "executorch-int8")
BACKENDS = CPU_BACKENDS + GPU_BACKENDS + EXECUTORCH_BACKENDS + ORT_INT8_BACKENDS
# An INT8 method (nasdeploy.export.formats.INT8_METHODS) -> its latency backend and that backend's float twin.
INT8_LATENCY_BACKENDS: dict[str, str] = dict(zip(INT8_METHODS, ("ort-int8-cpu-1t", "executorch-int8"), strict=True))
FLOAT_TWIN: dict[str, str] = {"ort-int8-cpu-1t": "ort-cpu-1t", "executorch-int8": "executorch-fp32"}
BACKEND_GROUPS: dict[str, tuple[str, ...]] = {
    "none": (),
    "cpu": CPU_BACKENDS,
    "gpu": GPU_BACKENDS,
    "all": BACKENDS,
    "mobile": ("torch-cpu-1t", "ort-cpu-1t"),
    "executorch": EXECUTORCH_BACKENDS,
    "int8": tuple(INT8_LATENCY_BACKENDS.values()),
}

Runner = Callable[[nn.Module | None, Path | None, tuple[int, ...], LatencyConfig], Prepared | LatencyResult]
RUNNERS: dict[str, Runner] = {
    "executorch-fp32": executorch_float,
    "executorch-int8": executorch_int8,
    "torch-cpu": torch_cpu,
    "torch-cpu-1t": torch_cpu_1t,
    "torch-cuda": torch_cuda,
    "torch-cuda-graph": torch_cuda_graph,
    "ort-cpu": ort_cpu,
    "ort-cpu-1t": ort_cpu_1t,
    "ort-int8-cpu-1t": ort_int8_cpu_1t,
    "ort-cuda": ort_cuda,
    "ort-trt": ort_trt,
}


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


def prepare_model_file(backend: str, path: str | os.PathLike[str], input_shape: tuple[int, ...],
                       cfg: LatencyConfig) -> Prepared:
    """Prepare timing an existing model file with `backend`'s settings: .onnx in onnxruntime (an INT8 file for
    ort-int8-cpu-1t, nothing is re-quantized), .pte in ExecuTorch (float or INT8 program)."""
    path = Path(path)
    if backend in EXECUTORCH_BACKENDS:
        return time_pte(path, input_shape, cfg)
    if backend in ORT_INT8_BACKENDS:
        return time_int8_onnx(path, input_shape, cfg)
    if backend in ORT_BACKENDS:
        prepared = RUNNERS[backend](None, path, tuple(input_shape), cfg)
        assert isinstance(prepared, Prepared), prepared.note if isinstance(prepared, LatencyResult) else prepared
        return prepared
    raise ConfigError(f"latency backend '{backend}' times a PyTorch model, not a model file")


def time_model_file(backend: str, path: str | os.PathLike[str], input_shape: tuple[int, ...],
                    cfg: LatencyConfig) -> LatencyResult:
    """Time one existing model file with `backend`'s settings (see prepare_model_file)."""
    return measure_prepared(backend, prepare_model_file(backend, path, input_shape, cfg), cfg)


@dataclass(frozen=True)
class LatencySubject:
    """One model to time: its label, backends, the PyTorch model and/or ONNX file, and files a backend times instead.

    `model_files` maps a backend to an existing file it times (e.g. ort-int8-cpu-1t -> model_int8.onnx,
    executorch-int8 -> model_int8.pte: nothing is lowered or quantized again).
    """

    label: str
    backends: tuple[str, ...]
    model: nn.Module | None = None
    onnx_path: str | os.PathLike[str] | None = None
    model_files: Mapping[str, str | os.PathLike[str]] = field(default_factory=dict)


def _error(name: str, cfg: LatencyConfig, exc: Exception) -> LatencyResult:
    if isinstance(exc, NasDeployError):
        return LatencyResult(name, "error", cfg.batch, note=str(exc))
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return LatencyResult(name, "error", cfg.batch, note=f"{type(exc).__name__}: {first}")


def _prepare(subject: LatencySubject, name: str, shape: tuple[int, ...], cfg: LatencyConfig) -> Prepared | LatencyResult:
    """The prepared measurement of one backend of one subject, or the result that says why it cannot run."""
    files = subject.model_files
    try:
        if name in files:
            return prepare_model_file(name, files[name], shape, cfg)
        if name in ORT_BACKENDS and subject.onnx_path is None:
            return skipped(name, cfg, "needs an ONNX file")
        if name not in ORT_BACKENDS and subject.model is None:
            return skipped(name, cfg, "needs a PyTorch model (an .onnx target has none)")
        onnx_path = Path(subject.onnx_path) if subject.onnx_path is not None else None
        return RUNNERS[name](subject.model, onnx_path, tuple(shape), cfg)
    except Exception as exc:  # a runtime failure in one backend must not hide the others
        return _error(name, cfg, exc)


def compare_latency(subjects: Sequence[LatencySubject], input_shape: tuple[int, ...],
                    cfg: LatencyConfig) -> dict[str, dict[str, LatencyResult]]:
    """Time every backend of every subject in one window, in turns (A B A B ...): label -> backend -> result.

    Every record carries the machine's load over the window (contended or quiet) and what it alternated with.
    A backend that cannot run here (no GPU, provider missing) is 'skipped' with the reason; one that fails is
    'error' with the first line of the failure, so one bad backend never hides the others.
    """
    results: dict[str, dict[str, LatencyResult]] = {s.label: {} for s in subjects}
    prepared: dict[tuple[str, str], Prepared] = {}
    try:
        for subject in subjects:
            for name in parse_backends(list(subject.backends)):
                outcome = _prepare(subject, name, tuple(input_shape), cfg)
                if isinstance(outcome, Prepared):
                    prepared[(subject.label, name)] = outcome
                else:
                    results[subject.label][name] = outcome
        keys = {f"{label}: {name}" if label else name: (label, name) for label, name in prepared}
        window = run_alternated({key: prepared[pair] for key, pair in keys.items()}, cfg) if keys else None
    finally:
        close_all(list(prepared.values()))
    for key, (label, name) in keys.items():
        assert window is not None
        if key in window.errors:
            results[label][name] = LatencyResult(name, "error", cfg.batch, note=window.errors[key], load=window.load)
            continue
        p = prepared[(label, name)]
        others = tuple(k for k in keys if k != key)
        results[label][name] = summarize(name, window.times[key], cfg, p.settings, p.note, window.load, others)
    return results


def measure_latency(
    backends: Sequence[str],
    input_shape: tuple[int, ...],
    cfg: LatencyConfig,
    *,
    model: nn.Module | None = None,
    onnx_path: str | Path | None = None,
    model_files: Mapping[str, str | os.PathLike[str]] | None = None,
) -> dict[str, LatencyResult]:
    """Time each backend of one model, alternating between them (compare_latency with one subject).

    torch backends need `model`, onnxruntime backends need `onnx_path`; `model_files` maps a backend to an
    existing file it times instead (see LatencySubject).
    """
    subject = LatencySubject("", tuple(backends), model, onnx_path, dict(model_files or {}))
    return compare_latency([subject], input_shape, cfg)[""]


FILE_TIMING = LatencyConfig(batch=1, warmup=5, runs=30, block=5)  # the export's INT8 report: batch 1, few runs


@dataclass(frozen=True)
class ModelFileTimer:
    """Times exported files together (alternated) for the export's INT8 report; a typed callable (export.options.FileTimer)."""

    config: LatencyConfig = FILE_TIMING

    def __call__(self, files: Mapping[str, tuple[str, Path]], input_shape: tuple[int, int, int]) -> dict[str, dict[str, Any]]:
        """label -> the LatencyResult dict of its (backend, file), all timed in one alternated window."""
        subjects = [LatencySubject(label, (backend,), model_files={backend: path})
                    for label, (backend, path) in files.items()]
        results = compare_latency(subjects, input_shape, self.config)
        return {label: results[label][backend].to_dict() for label, (backend, _) in files.items()}
