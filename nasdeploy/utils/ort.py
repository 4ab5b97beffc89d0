"""The one onnxruntime session builder shared by export parity checks and the profiler's latency backends."""

from __future__ import annotations

import os
from typing import Any, Sequence

from nasdeploy.errors import ExportError, NasDeployError
from nasdeploy.utils.optional import require

ORT_OPT_LEVEL = "ORT_ENABLE_ALL"


def ort_session_options(ort: Any, threads: int | None = None) -> Any:
    """Session options: full graph optimisation, errors-only logging; threads=n fixes both pools, no spinning."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_OPT_LEVEL)
    opts.log_severity_level = 3  # errors only: provider fallbacks are reported by checking get_providers()
    if threads is not None:
        # threads=1 is the mobile proxy: one intra-op and one inter-op thread, no busy-waiting spin.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def ort_session(path: str | os.PathLike[str], *, threads: int | None = None,
                providers: Sequence[Any] = ("CPUExecutionProvider",),
                error: type[NasDeployError] = ExportError, purpose: str = "running ONNX models") -> Any:
    """An onnxruntime InferenceSession for `path`; a model onnxruntime cannot load raises `error` in one line.

    The caller checks session.get_providers(): onnxruntime silently falls back to the CPU provider.
    """
    ort = require("onnxruntime", purpose=purpose)
    try:
        return ort.InferenceSession(str(path), sess_options=ort_session_options(ort, threads), providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own exception types for bad models
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise error(f"onnxruntime cannot load {path}: {first}") from None
