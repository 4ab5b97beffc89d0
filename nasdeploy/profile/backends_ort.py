"""onnxruntime latency backends: CPU (all threads / the 1-thread mobile proxy), static INT8, CUDA and TensorRT.

Each prepares its measurement (protocol.Prepared: a session and its feed) or says why it cannot run here.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from nasdeploy.errors import ConfigError
from nasdeploy.profile.protocol import LatencyConfig, LatencyResult, Prepared, skipped, wall_clock_ms
from nasdeploy.utils.optional import require
from nasdeploy.utils.ort import ORT_OPT_LEVEL, ort_session


def _ort() -> Any:
    return require("onnxruntime", purpose="onnxruntime latency")


def _session(ort: Any, path: Path, threads: int | None, providers: list[Any]) -> Any:
    """The shared session builder (nasdeploy.utils.ort); a model that cannot load is a ConfigError."""
    return ort_session(path, threads=threads, providers=providers, error=ConfigError, purpose="onnxruntime latency")


def _feed(session: Any, shape: tuple[int, ...], cfg: LatencyConfig) -> dict[str, np.ndarray]:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ConfigError(f"latency timing supports models with one input; this one has {len(inputs)}")
    inp = inputs[0]
    declared = inp.shape
    if declared and isinstance(declared[0], int) and declared[0] != cfg.batch:
        raise ConfigError(f"the ONNX model has a fixed batch of {declared[0]}; cannot time batch {cfg.batch}")
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    rng = np.random.default_rng(cfg.seed)
    return {inp.name: rng.standard_normal((cfg.batch, *shape)).astype(dtype)}


def _cpu(path: Path, shape: tuple[int, ...], cfg: LatencyConfig, threads: int | None) -> Prepared:
    ort = _ort()
    session = _session(ort, path, threads, ["CPUExecutionProvider"])
    feed = _feed(session, shape, cfg)
    settings = {
        "providers": session.get_providers(),
        "intra_op_threads": threads if threads is not None else f"default (physical cores; {os.cpu_count()} logical CPUs)",
        "inter_op_threads": threads if threads is not None else "default",
        "allow_spinning": "0" if threads is not None else "default",
        "graph_optimization": ORT_OPT_LEVEL,
        "model_bytes": sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file()),
    }
    return Prepared(wall_clock_ms(lambda: session.run(None, feed)), settings)


def ort_cpu(model: nn.Module | None, onnx_path: Path | None, shape: tuple[int, ...], cfg: LatencyConfig) -> Prepared:
    """onnxruntime CPUExecutionProvider with its default thread pool (all physical cores)."""
    assert onnx_path is not None
    return _cpu(onnx_path, shape, cfg, None)


def ort_cpu_1t(model: nn.Module | None, onnx_path: Path | None, shape: tuple[int, ...], cfg: LatencyConfig) -> Prepared:
    """onnxruntime CPU with the mobile-proxy settings: 1 intra-op thread, 1 inter-op thread, no spinning."""
    assert onnx_path is not None
    return _cpu(onnx_path, shape, cfg, 1)


INT8_CALIBRATION_IMAGES = 8  # the same count executorch-int8 calibrates on


def ort_int8_cpu_1t(model: nn.Module | None, onnx_path: Path | None, shape: tuple[int, ...], cfg: LatencyConfig) -> Prepared:
    """The ONNX model quantized by onnxruntime (static QDQ, per-channel INT8 weights), timed like ort-cpu-1t.

    Calibrated on seeded random-normal inputs: the timing does not depend on the calibration data, but the
    accuracy does, so this INT8 model is for latency only (the export's INT8 path calibrates on real images).
    """
    from nasdeploy.export.onnx import onnx_io
    from nasdeploy.export.ort_int8 import OrtInt8Options, ort_static_int8

    assert onnx_path is not None
    ort = _ort()
    dims = onnx_io(onnx_path)["inputs"][0]["dims"]
    batch = dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else 1  # calibrate at a fixed batch
    rng = np.random.default_rng(cfg.seed)
    calibration = [rng.standard_normal((batch, *shape)).astype(np.float32)
                   for _ in range(max(1, INT8_CALIBRATION_IMAGES // batch))]
    options = OrtInt8Options()
    with tempfile.TemporaryDirectory(prefix="nasdeploy-ort-int8-") as tmp:
        quantized = ort_static_int8(onnx_path, Path(tmp) / "model.int8.onnx", calibration, options=options)
        prepared = _cpu(quantized, shape, cfg, 1)  # the session holds the model: the file may go
    settings = {**prepared.settings, "quantization": f"{options.scheme()} (onnxruntime {ort.__version__})"}
    note = (f"onnxruntime static INT8 calibrated on {batch * len(calibration)} random-normal images "
            "(timing only; accuracy needs the export's data)")
    return dataclasses.replace(prepared, settings=settings, note=note)


def time_int8_onnx(path: Path, shape: tuple[int, ...], cfg: LatencyConfig) -> Prepared:
    """An INT8 ONNX file that exists already (the export's model_int8.onnx), timed like ort-cpu-1t."""
    prepared = _cpu(path, shape, cfg, 1)
    return dataclasses.replace(prepared, settings={**prepared.settings, "program": path.name})


def _gpu(name: str, provider: str, provider_options: dict[str, Any], path: Path, shape: tuple[int, ...],
         cfg: LatencyConfig) -> Prepared | LatencyResult:
    ort = _ort()
    available = ort.get_available_providers()
    if provider not in available:
        return skipped(name, cfg, f"{provider} is not in this onnxruntime build ({', '.join(available)}); install nasdeploy[gpu]")
    providers: list[Any] = [(provider, provider_options)]
    if provider != "CUDAExecutionProvider" and "CUDAExecutionProvider" in available:
        providers.append("CUDAExecutionProvider")
    providers.append("CPUExecutionProvider")
    session = _session(ort, path, None, providers)
    used = session.get_providers()
    if not used or used[0] != provider:
        # onnxruntime-gpu silently falls back to CPU when CUDA / TensorRT libraries are missing.
        return skipped(name, cfg, f"onnxruntime did not activate {provider} (active: {', '.join(used)})", {"providers": used})
    feed = _feed(session, shape, cfg)
    (input_name, array), = feed.items()
    # Input and outputs resident on the GPU so that host<->device copies are not timed.
    binding = session.io_binding()
    binding.bind_ortvalue_input(input_name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
    for out in session.get_outputs():
        binding.bind_output(out.name, "cuda", 0)

    once = wall_clock_ms(lambda: session.run_with_iobinding(binding))  # it synchronises the provider's stream

    once()  # untimed first run even with warmup=0: it builds the TensorRT engine / loads CUDA kernels
    settings = {"providers": used, "io_binding": "input and outputs on cuda:0", "graph_optimization": ORT_OPT_LEVEL}
    if provider_options:
        settings["provider_options"] = provider_options
    return Prepared(once, settings)


def ort_cuda(model: nn.Module | None, onnx_path: Path | None, shape: tuple[int, ...],
             cfg: LatencyConfig) -> Prepared | LatencyResult:
    """onnxruntime CUDAExecutionProvider (checked active via session.get_providers())."""
    assert onnx_path is not None
    return _gpu("ort-cuda", "CUDAExecutionProvider", {}, onnx_path, shape, cfg)


def ort_trt(model: nn.Module | None, onnx_path: Path | None, shape: tuple[int, ...],
            cfg: LatencyConfig) -> Prepared | LatencyResult:
    """onnxruntime TensorrtExecutionProvider (fp32; the engine is built during the warm-up runs)."""
    assert onnx_path is not None
    opts = {"trt_fp16_enable": False, "trt_engine_cache_enable": False}
    return _gpu("ort-trt", "TensorrtExecutionProvider", opts, onnx_path, shape, cfg)
