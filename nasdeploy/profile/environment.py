"""The machine and library versions a profile was measured on."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

_PACKAGES = ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "numpy", "tensorrt")


def cpu_model() -> str:
    """The CPU model name (from /proc/cpuinfo on Linux, else platform.processor())."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def physical_cores() -> int | None:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo, or None where that is not available."""
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        return None
    cores, phys = set(), "0"
    for line in info.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            phys = value.strip()
        elif key == "core id":
            cores.add((phys, value.strip()))
    return len(cores) or None


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def collect_environment() -> dict[str, Any]:
    """CPU model and INT8 flags, core and thread counts, OS, Python and library versions, GPU name and CUDA versions."""
    from nasdeploy.export.int8_cpu import cpu_int8_support

    env: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_int8": cpu_int8_support().to_dict(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "versions": _versions(),
        "cuda_available": torch.cuda.is_available(),
        "gpu": None,
    }
    try:
        import onnxruntime as ort

        env["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        env["onnxruntime_providers"] = []
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                      "capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count(),
                      "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    return env
