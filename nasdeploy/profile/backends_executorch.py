"""ExecuTorch latency backends: the XNNPACK-lowered .pte (float and PT2E INT8) in ExecuTorch's own runtime.

Same protocol as the other backends (untimed warm-up, timed runs, median/p90/p99). ExecuTorch's CPU
threadpool is process-wide and sized at start-up (one thread per CPU); resizing it with the Python
binding's _unsafe_reset_threadpool deadlocked XNNPACK here (measured), so the size used is reported, not set.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nasdeploy.errors import ConfigError
from nasdeploy.profile.protocol import LatencyConfig, LatencyResult, Prepared, skipped, wall_clock_ms


def time_pte(path: str | Path, shape: tuple[int, ...], cfg: LatencyConfig) -> Prepared:
    """Time an existing .pte (batch = the program's own batch); settings state ExecuTorch's threadpool size."""
    from nasdeploy.export.executorch import executorch_thread_count, load_pte

    prog = load_pte(path)
    batch = prog.input_shape[0] if prog.input_shape else 1
    if batch != cfg.batch:
        raise ConfigError(f"the ExecuTorch program has a fixed batch of {batch}; cannot time batch {cfg.batch}")
    if tuple(prog.input_shape[1:]) != tuple(shape):
        raise ConfigError(f"the ExecuTorch program takes {list(prog.input_shape)}, not {[batch, *shape]}")
    rng = np.random.default_rng(cfg.seed)
    x = torch.from_numpy(rng.standard_normal((batch, *shape)).astype(np.float32))
    threads = executorch_thread_count()
    # "intra_op_threads": the key the report table prints as threads=; ExecuTorch's pool is its intra-op pool.
    settings = {"runtime": prog.label, "program": Path(path).name,
                "intra_op_threads": threads if threads is not None else "ExecuTorch default",
                "delegate": "XNNPACK", "input": "host memory (no copies are timed beyond ExecuTorch's own)",
                "model_bytes": Path(path).stat().st_size}
    return Prepared(wall_clock_ms(lambda: prog.method.execute([x])), settings)


def _timed_from_model(name: str, model: nn.Module, shape: tuple[int, ...], cfg: LatencyConfig,
                      int8: bool) -> Prepared | LatencyResult:
    from nasdeploy.errors import MissingDependencyError
    from nasdeploy.export import executorch as et

    try:
        et.import_executorch()
    except MissingDependencyError as exc:
        return skipped(name, cfg, str(exc))
    if len(shape) != 3:
        raise ConfigError(f"ExecuTorch timing needs a (C, H, W) image input, got {shape}")
    if cfg.batch != 1:
        raise ConfigError("ExecuTorch programs are exported at batch 1 (the mobile case); use --batch 1")
    tmp = tempfile.TemporaryDirectory(prefix="nasdeploy-et-")
    try:
        path = Path(tmp.name) / "model.pte"
        note = ""
        if int8:
            gen = torch.Generator().manual_seed(cfg.seed)
            calib = [torch.randn((4, *shape), generator=gen) for _ in range(2)]
            et.lower_quantized_to_pte(et.quantize_pt2e_xnnpack(model, shape, calib), path, shape)
            note = "PT2E INT8 calibrated on 8 random-normal images (timing only; accuracy needs the export's data)"
        else:
            et.lower_to_pte(model, path, shape)
        prepared = time_pte(path, shape, cfg)
    except BaseException:
        tmp.cleanup()
        raise
    # The program may be memory-mapped from the file: the folder goes only once the runs are done.
    return dataclasses.replace(prepared, note=note, close=tmp.cleanup)


def executorch_float(model: nn.Module | None, onnx_path: Path | None, shape: tuple[int, ...],
                     cfg: LatencyConfig) -> Prepared | LatencyResult:
    """The model lowered to a float32 XNNPACK .pte, timed in ExecuTorch."""
    assert model is not None
    return _timed_from_model("executorch-fp32", model, shape, cfg, int8=False)


def executorch_int8(model: nn.Module | None, onnx_path: Path | None, shape: tuple[int, ...],
                    cfg: LatencyConfig) -> Prepared | LatencyResult:
    """The model quantized with PT2E (XNNPACKQuantizer) and lowered to an INT8 .pte, timed in ExecuTorch."""
    assert model is not None
    return _timed_from_model("executorch-int8", model, shape, cfg, int8=True)
