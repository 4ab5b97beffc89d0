"""INT8 the two usual ways, calibrated and scored on the run's own dataset.

- onnxruntime static quantization: QDQ format, per-channel symmetric INT8 weights, MinMax calibration on N
  images of the training split (eval transform, a seeded random sample).
- PT2E for XNNPACK: ExecuTorch's XNNPACKQuantizer, lowered to an INT8 .pte (see export/executorch.py).

Each path reports top-1 of the float and the INT8 model on a sample of the validation split, their
difference, size on disk and latency; a network a path cannot quantize gives one line, not a traceback.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from nasdeploy.errors import ConfigError, NasDeployError
from nasdeploy.export.options import FileTimer
from nasdeploy.export.parity import Runner
from nasdeploy.export.torch_reference import as_arrays
from nasdeploy.export.samples import Batch, ImageSample


def top1(run: Runner, batches: Sequence[Batch]) -> float:
    """Top-1 accuracy of `run` (first output = logits) over labelled batches."""
    correct = total = 0
    for x, y in batches:
        logits = run(x)[0]
        correct += int((logits.argmax(1) == y).sum())
        total += len(y)
    return correct / total if total else float("nan")


def torch_runner(model: nn.Module) -> Runner:
    """A Runner around an eval-mode PyTorch model (the eager reference)."""
    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return as_arrays(model.eval()(torch.from_numpy(np.ascontiguousarray(x))))

    return run


def ort_static_int8(
    onnx_path: str | os.PathLike[str], out_path: str | os.PathLike[str], calibration: Sequence[np.ndarray],
    *, per_channel: bool = True,
) -> Path:
    """onnxruntime static INT8 (QDQ, per-channel weights, MinMax) calibrated on `calibration` batches."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from nasdeploy.export.onnx import onnx_io
    from nasdeploy.utils.files import atomic_path

    class Reader(CalibrationDataReader):
        """The calibration batches, one feed dict at a time."""

        def __init__(self, input_name: str):
            self._feeds = iter([{input_name: np.ascontiguousarray(b, dtype=np.float32)} for b in calibration])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    if not calibration:
        raise ConfigError("onnxruntime static quantization needs at least one calibration batch")
    reader = Reader(onnx_io(onnx_path)["inputs"][0]["name"])
    with atomic_path(out_path) as tmp:
        quantize_static(
            str(onnx_path), str(tmp), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    return Path(out_path)


@dataclass
class QuantizationResult:
    """One INT8 path: files, accuracy of float vs INT8 on validation images, sizes, latency, or why it failed."""

    method: str  # "ort" | "executorch"
    status: str  # "ok" | "failed"
    scheme: str
    runtime: str = ""
    file: str | None = None
    float_file: str | None = None
    calibration: str = ""
    validation: str = ""
    metric: str = "top1"
    float_metric: float | None = None
    int8_metric: float | None = None
    torch_metric: float | None = None
    float_size_bytes: int | None = None
    int8_size_bytes: int | None = None
    latency: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def delta(self) -> float | None:
        """INT8 metric minus float metric (negative = accuracy lost)."""
        if self.float_metric is None or self.int8_metric is None:
            return None
        return self.int8_metric - self.float_metric

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with the difference."""
        return {**asdict(self), "delta": self.delta}

    def summary(self) -> str:
        """One or two lines for the terminal."""
        if self.status != "ok":
            return f"  INT8 {self.method}: not quantized: {self.note}"
        lat = ", ".join(f"{k} {v['median_ms']:.2f} ms" for k, v in self.latency.items() if v.get("median_ms") is not None)
        size = f"{self.float_size_bytes / 1e6:.2f} MB -> {self.int8_size_bytes / 1e6:.2f} MB"
        return (f"  INT8 {self.method} ({self.runtime}): {self.metric} float {100 * self.float_metric:.2f}% -> "
                f"int8 {100 * self.int8_metric:.2f}% (delta {100 * self.delta:+.2f} pts) on {self.validation}; "
                f"size {size}; median latency {lat or 'n/a'}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _latency(timer: FileTimer | None, backend: str, path: Path, input_shape: tuple[int, int, int]) -> dict[str, Any]:
    if timer is None:
        return {"status": "skipped", "note": "latency not measured (the export was given no timer)"}
    try:
        return timer(backend, path, input_shape)
    except Exception as exc:  # timing must not fail an accuracy report
        return {"status": "error", "note": _first_line(exc)}


def _quantize_and_score(res: QuantizationResult, quantize: Callable[[], Any], runner: Callable[[Path], Runner],
                        float_path: Path, out_path: Path, validation: ImageSample,
                        describe: Callable[[Exception], str]) -> bool:
    """Write the INT8 model and score float and INT8 on the validation images; a failure is one line in res.note."""
    try:
        quantize()
        res.float_metric = top1(runner(float_path), validation.batches)
        res.int8_metric = top1(runner(out_path), validation.batches)
    except Exception as exc:
        out_path.unlink(missing_ok=True)
        res.note = describe(exc)
        return False
    return True


def _succeeded(res: QuantizationResult, model: nn.Module, out_path: Path, validation: ImageSample, float_bytes: int,
               timings: Sequence[tuple[str, str, Path]], timer: FileTimer | None,
               input_shape: tuple[int, int, int]) -> QuantizationResult:
    """Complete a quantization that ran: eager top-1 (the reference), file, sizes, latency of each (label, backend, file)."""
    res.torch_metric = top1(torch_runner(model), validation.batches)
    res.status, res.file = "ok", out_path.name
    res.float_size_bytes, res.int8_size_bytes = float_bytes, out_path.stat().st_size
    res.latency = {label: _latency(timer, backend, path, input_shape) for label, backend, path in timings}
    return res


def quantize_with_ort(
    model: nn.Module, onnx_path: Path, out_path: Path, calibration: ImageSample, validation: ImageSample,
    *, input_shape: tuple[int, int, int], timer: FileTimer | None,
) -> QuantizationResult:
    """onnxruntime static INT8 of `onnx_path`; top-1 of float and INT8 ONNX in onnxruntime (CPU), sizes, latency."""
    import onnxruntime as ort

    from nasdeploy.export.onnx_parity import onnxruntime_runner

    res = QuantizationResult("ort", "failed", "onnxruntime static QDQ, per-channel symmetric INT8 weights, INT8 "
                             "activations, MinMax calibration", runtime=f"onnxruntime {ort.__version__} CPU",
                             calibration=calibration.label, validation=validation.label, float_file=onnx_path.name)
    if not _quantize_and_score(res, lambda: ort_static_int8(onnx_path, out_path, calibration.images),
                               lambda path: onnxruntime_runner(path)[0], onnx_path, out_path, validation,
                               lambda exc: f"onnxruntime static quantization failed: {_first_line(exc)}"):
        return res
    float_bytes = sum(p.stat().st_size for p in onnx_path.parent.glob(onnx_path.name + "*"))
    timings = [("float ort-cpu-1t", "ort-cpu-1t", onnx_path), ("int8 ort-cpu-1t", "ort-cpu-1t", out_path)]
    return _succeeded(res, model, out_path, validation, float_bytes, timings, timer, input_shape)


def quantize_with_executorch(
    model: nn.Module, float_pte: Path, out_path: Path, calibration: ImageSample, validation: ImageSample,
    *, input_shape: tuple[int, int, int], timer: FileTimer | None,
) -> QuantizationResult:
    """PT2E INT8 for XNNPACK lowered to `out_path`; top-1 of the float and INT8 .pte in ExecuTorch, sizes, latency."""
    from nasdeploy.export import executorch as et

    def quantize() -> None:
        q = et.quantize_pt2e_xnnpack(model, input_shape, (torch.from_numpy(x) for x in calibration.images))
        et.lower_quantized_to_pte(q, out_path, input_shape)

    def describe(exc: Exception) -> str:
        if isinstance(exc, NasDeployError):
            return str(exc)
        return f"PT2E quantization failed: {type(exc).__name__}: {_first_line(exc)}"

    res = QuantizationResult("executorch", "failed", "PT2E XNNPACKQuantizer: symmetric INT8, per-channel weights, "
                             "static activations", runtime=f"executorch {et.executorch_version()} XNNPACK",
                             calibration=calibration.label, validation=validation.label, float_file=float_pte.name)
    if not _quantize_and_score(res, quantize, lambda path: et.executorch_runner(path)[0], float_pte, out_path,
                               validation, describe):
        return res
    timings = [("float executorch-fp32", "executorch-fp32", float_pte), ("int8 executorch", "executorch-int8", out_path)]
    return _succeeded(res, model, out_path, validation, float_pte.stat().st_size, timings, timer, input_shape)


Quantizer = Callable[..., QuantizationResult]  # quantize_with_ort / quantize_with_executorch
