"""Latency backends by name (groups, INT8 twins) and the dispatcher that times a model or given model files.

The protocol itself (config, warm-up and timed runs, statistics) is nasdeploy.profile.protocol; the backends
(profile/backends_*.py) implement it and import only that module, never this one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from nasdeploy.errors import ConfigError, NasDeployError
from nasdeploy.export.formats import INT8_METHODS
from nasdeploy.profile.backends_executorch import executorch_float, executorch_int8, time_pte
from nasdeploy.profile.backends_ort import ort_cpu, ort_cpu_1t, ort_cuda, ort_int8_cpu_1t, ort_trt, time_int8_onnx
from nasdeploy.profile.backends_torch import torch_cpu, torch_cpu_1t, torch_cuda, torch_cuda_graph
from nasdeploy.profile.protocol import LatencyConfig, LatencyResult, skipped

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

Runner = Callable[[nn.Module | None, Path | None, tuple[int, ...], LatencyConfig], LatencyResult]
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


def time_model_file(backend: str, path: str | os.PathLike[str], input_shape: tuple[int, ...],
                    cfg: LatencyConfig) -> LatencyResult:
    """Time an existing model file with `backend`'s settings: .onnx in onnxruntime (an INT8 file for
    ort-int8-cpu-1t, nothing is re-quantized), .pte in ExecuTorch (float or INT8 program)."""
    path = Path(path)
    if backend in EXECUTORCH_BACKENDS:
        return time_pte(backend, path, input_shape, cfg)
    if backend in ORT_INT8_BACKENDS:
        return time_int8_onnx(backend, path, input_shape, cfg)
    if backend in ORT_BACKENDS:
        return RUNNERS[backend](None, path, tuple(input_shape), cfg)
    raise ConfigError(f"latency backend '{backend}' times a PyTorch model, not a model file")


def measure_latency(
    backends: Sequence[str],
    input_shape: tuple[int, ...],
    cfg: LatencyConfig,
    *,
    model: nn.Module | None = None,
    onnx_path: str | Path | None = None,
    model_files: Mapping[str, str | os.PathLike[str]] | None = None,
) -> dict[str, LatencyResult]:
    """Time each backend; torch backends need `model`, onnxruntime backends need `onnx_path`.

    `model_files` maps a backend to an existing file it times instead (e.g. ort-int8-cpu-1t -> model_int8.onnx,
    executorch-fp32 -> model.pte, executorch-int8 -> model_int8.pte: nothing is lowered or quantized again).
    A backend that cannot run here (no GPU, provider missing) is 'skipped' with the reason; one that
    fails is 'error' with the first line of the failure, so one bad backend never hides the others.
    """
    files = dict(model_files or {})
    results: dict[str, LatencyResult] = {}
    for name in parse_backends(list(backends)):
        if name in files:
            run: Callable[[], LatencyResult] = lambda name=name: time_model_file(name, files[name], input_shape, cfg)
        elif name in ORT_BACKENDS and onnx_path is None:
            results[name] = skipped(name, cfg, "needs an ONNX file")
            continue
        elif name not in ORT_BACKENDS and model is None:
            results[name] = skipped(name, cfg, "needs a PyTorch model (an .onnx target has none)")
            continue
        else:
            run = lambda name=name: RUNNERS[name](model, Path(onnx_path) if onnx_path else None, tuple(input_shape), cfg)
        try:
            results[name] = run()
        except NasDeployError as exc:
            results[name] = LatencyResult(name, "error", cfg.batch, note=str(exc))
        except Exception as exc:  # a runtime failure in one backend must not hide the others
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            results[name] = LatencyResult(name, "error", cfg.batch, note=f"{type(exc).__name__}: {first}")
    return results


FILE_TIMING = LatencyConfig(batch=1, warmup=5, runs=30)  # the export's INT8 report: batch 1, few runs


@dataclass(frozen=True)
class ModelFileTimer:
    """Times exported files for the export's INT8 report with the profiler's protocol; a typed callable."""

    config: LatencyConfig = FILE_TIMING

    def __call__(self, backend: str, path: Path, input_shape: tuple[int, int, int]) -> dict[str, Any]:
        """The LatencyResult dict of `path` timed by `backend` (see time_model_file)."""
        return time_model_file(backend, path, input_shape, self.config).to_dict()
