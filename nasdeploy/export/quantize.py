"""INT8 the two usual ways, calibrated and scored on the run's own dataset.

- onnxruntime static quantization: QDQ format, per-channel symmetric INT8 weights, MinMax calibration on N
  images of the training split (eval transform, a seeded random sample).
- PT2E for XNNPACK: ExecuTorch's XNNPACKQuantizer, lowered to an INT8 .pte (see export/executorch.py).

Each path reports top-1 of the float and the INT8 model on a sample of the validation split, their
difference, size on disk and latency; a network a path cannot quantize gives one line, not a traceback.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from nasdeploy.errors import ConfigError, NasDeployError

INT8_METHODS = ("ort", "executorch")
Runner = Callable[[np.ndarray], list[np.ndarray]]
Batch = tuple[np.ndarray, np.ndarray]  # (images float32 [N, C, H, W], labels int64 [N])


def dataset_config(
    dataset: str,
    data_dir: str | os.PathLike[str] | None,
    image_size: int,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Any:
    """A DataConfig for evaluating / calibrating an exported net (eval transform at the export input size)."""
    from nasdeploy.data.factory import DataConfig

    augment = "cifar" if image_size <= 64 and dataset != "imagefolder" else "imagenet"
    if dataset in ("cifar10", "cifar100", "imagefolder") and data_dir is None:
        raise ConfigError(f"dataset '{dataset}' needs a data directory (--data-dir)")
    return DataConfig(
        dataset=dataset, data_dir=str(data_dir) if data_dir is not None else None, augment=augment,
        image_size=image_size, mean=tuple(mean) if mean is not None else None, std=tuple(std) if std is not None else None,
    )


def sample_batches(data_cfg: Any, split: str, count: int, *, seed: int = 0, batch_size: int = 32) -> list[Batch]:
    """`count` images (a seeded random sample, not the first N: folders are sorted by class) of `split`."""
    from nasdeploy.data.factory import build_dataset

    if count < 1:
        raise ConfigError(f"need a positive number of {split} images, got {count}")
    dataset, _ = build_dataset(data_cfg, split, augment=False)
    n = len(dataset)
    if n == 0:
        raise ConfigError(f"the {split} split of {data_cfg.dataset} is empty")
    idx = np.random.default_rng(seed).permutation(n)[: min(count, n)]
    batches: list[Batch] = []
    for start in range(0, len(idx), batch_size):
        items = [dataset[int(i)] for i in idx[start:start + batch_size]]
        x = torch.stack([img for img, _ in items]).numpy().astype(np.float32)
        y = np.asarray([int(label) for _, label in items], dtype=np.int64)
        batches.append((x, y))
    return batches


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
    from nasdeploy.export.parity import _as_arrays

    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return _as_arrays(model.eval()(torch.from_numpy(np.ascontiguousarray(x))))

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


Timer = Callable[[str, Path, tuple[int, int, int]], dict[str, Any]]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _latency(timer: Timer | None, backend: str, path: Path, input_shape: tuple[int, int, int]) -> dict[str, Any]:
    if timer is None:
        return {"status": "skipped", "note": "latency not measured (the export was given no timer)"}
    try:
        return timer(backend, path, input_shape)
    except Exception as exc:  # timing must not fail an accuracy report
        return {"status": "error", "note": _first_line(exc)}


def quantize_with_ort(
    model: nn.Module, onnx_path: Path, out_path: Path, calibration: Sequence[Batch], validation: Sequence[Batch],
    *, input_shape: tuple[int, int, int], timer: Timer | None, calib_label: str, val_label: str,
) -> QuantizationResult:
    """onnxruntime static INT8 of `onnx_path`; top-1 of float and INT8 ONNX in onnxruntime (CPU), sizes, latency."""
    import onnxruntime as ort

    from nasdeploy.export.parity import onnxruntime_runner

    res = QuantizationResult("ort", "failed", "onnxruntime static QDQ, per-channel symmetric INT8 weights, INT8 "
                             "activations, MinMax calibration", runtime=f"onnxruntime {ort.__version__} CPU",
                             calibration=calib_label, validation=val_label, float_file=onnx_path.name)
    try:
        ort_static_int8(onnx_path, out_path, [x for x, _ in calibration])
        run_f, _, _ = onnxruntime_runner(onnx_path)
        run_q, _, _ = onnxruntime_runner(out_path)
        res.float_metric, res.int8_metric = top1(run_f, validation), top1(run_q, validation)
    except Exception as exc:
        out_path.unlink(missing_ok=True)
        res.note = f"onnxruntime static quantization failed: {_first_line(exc)}"
        return res
    res.torch_metric = top1(torch_runner(model), validation)
    res.status, res.file = "ok", out_path.name
    res.float_size_bytes = sum(p.stat().st_size for p in onnx_path.parent.glob(onnx_path.name + "*"))
    res.int8_size_bytes = out_path.stat().st_size
    res.latency = {
        "float ort-cpu-1t": _latency(timer, "ort-cpu-1t", onnx_path, input_shape),
        "int8 ort-cpu-1t": _latency(timer, "ort-cpu-1t", out_path, input_shape),
    }
    return res


def quantize_with_executorch(
    model: nn.Module, float_pte: Path, out_path: Path, calibration: Sequence[Batch], validation: Sequence[Batch],
    *, input_shape: tuple[int, int, int], timer: Timer | None, calib_label: str, val_label: str,
) -> QuantizationResult:
    """PT2E INT8 for XNNPACK lowered to `out_path`; top-1 of the float and INT8 .pte in ExecuTorch, sizes, latency."""
    from nasdeploy.export import executorch as et

    res = QuantizationResult("executorch", "failed", "PT2E XNNPACKQuantizer: symmetric INT8, per-channel weights, "
                             "static activations", runtime=f"executorch {et.executorch_version()} XNNPACK",
                             calibration=calib_label, validation=val_label, float_file=float_pte.name)
    try:
        q = et.quantize_pt2e_xnnpack(model, input_shape, (torch.from_numpy(x) for x, _ in calibration))
        et.lower_quantized_to_pte(q, out_path, input_shape)
        run_f, _, _ = et.executorch_runner(float_pte)
        run_q, _, _ = et.executorch_runner(out_path)
        res.float_metric, res.int8_metric = top1(run_f, validation), top1(run_q, validation)
    except NasDeployError as exc:
        out_path.unlink(missing_ok=True)
        res.note = str(exc)
        return res
    except Exception as exc:
        out_path.unlink(missing_ok=True)
        res.note = f"PT2E quantization failed: {type(exc).__name__}: {_first_line(exc)}"
        return res
    res.torch_metric = top1(torch_runner(model), validation)
    res.status, res.file = "ok", out_path.name
    res.float_size_bytes, res.int8_size_bytes = float_pte.stat().st_size, out_path.stat().st_size
    res.latency = {
        "float executorch-fp32": _latency(timer, "executorch-fp32", float_pte, input_shape),
        "int8 executorch": _latency(timer, "executorch-int8", out_path, input_shape),
    }
    return res


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """fn() and its wall time in seconds."""
    t0 = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t0, 2)
