"""INT8 the two usual ways, calibrated and scored on the run's own dataset, guarded on accuracy and on speed.

- onnxruntime static quantization (nasdeploy.export.ort_int8): QDQ, per-channel symmetric INT8 weights,
  the calibration method asked for (MinMax, Entropy, Percentile) on N images of the training split.
- PT2E for XNNPACK: ExecuTorch's XNNPACKQuantizer, lowered to an INT8 .pte (see export/executorch.py).

Each path reports top-1 of the float and the INT8 model on a sample of the validation split and their
difference; when INT8 loses more than Int8Options.max_drop points, the accuracy guard keeps the most
sensitive layers in float (nasdeploy.export.int8_guard) and says which; when PT2E is still over the limit and
Int8Options.qat_epochs > 0, quantization-aware fine-tuning on the training-split sample follows
(nasdeploy.export.int8_qat) and the better of the two by validation drop is kept. Float and INT8 are timed together
(alternated), and the speed guard says whether INT8 pays on this machine and, if not, why
(nasdeploy.export.int8_speed). A network a path cannot quantize gives one line, not a traceback.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from nasdeploy.errors import NasDeployError
from nasdeploy.export.int8_cpu import CpuInt8Support, cpu_int8_support
from nasdeploy.export.int8_guard import AccuracyGuard, keep_in_float, points, rank_layers, top1
from nasdeploy.export.int8_qat import QatRecord
from nasdeploy.export.int8_speed import SpeedVerdict, profile_reason, speed_verdict
from nasdeploy.export.options import Int8Options
from nasdeploy.export.parity import Runner
from nasdeploy.export.samples import ImageSample
from nasdeploy.export.torch_reference import as_arrays

SUBSET_IMAGES = 64  # validation images the guard ranks and refines on (the whole sample confirms)
Say = Callable[[str], None]


def torch_runner(model: nn.Module, batch: int | None = None) -> Runner:
    """A Runner around an eval-mode PyTorch model; batch=1 feeds a batch-1 graph (a PT2E module) image by image."""
    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            if batch is None:
                return as_arrays(model.eval()(torch.from_numpy(np.ascontiguousarray(x))))
            parts = [as_arrays(model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch]))))
                     for i in range(0, len(x), batch)]
            return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]

    return run


@dataclass
class QuantizationResult:
    """One INT8 path: files, float vs INT8 accuracy, the guards' verdicts, sizes, latency, or why it failed."""

    method: str  # "ort" | "executorch"
    status: str  # "ok" | "failed"
    scheme: str
    runtime: str = ""
    file: str | None = None
    float_file: str | None = None
    calibration: str = ""  # the calibration sample, in words
    calibration_method: str = ""
    calibration_images: int = 0
    validation: str = ""
    metric: str = "top1"
    float_metric: float | None = None
    int8_metric: float | None = None
    torch_metric: float | None = None
    float_size_bytes: int | None = None
    int8_size_bytes: int | None = None
    latency: dict[str, Any] = dataclasses.field(default_factory=dict)  # "float <backend>" / "int8 <backend>" -> record
    guard: AccuracyGuard | None = None
    speed: SpeedVerdict | None = None
    cpu: CpuInt8Support | None = None
    qat: QatRecord | None = None  # quantization-aware fine-tuning, when PTQ stayed over the guard's limit
    note: str = ""

    @property
    def delta(self) -> float | None:
        """INT8 metric minus float metric (negative = accuracy lost)."""
        if self.float_metric is None or self.int8_metric is None:
            return None
        return self.int8_metric - self.float_metric

    @property
    def kept_in_float(self) -> tuple[str, ...]:
        """Layers the accuracy guard left in float (module paths)."""
        return self.guard.kept_in_float if self.guard is not None else ()

    @property
    def verdict(self) -> str:
        """The INT8 verdict in one line: accuracy (and layers kept in float), speed and its reason."""
        if self.status != "ok":
            return f"INT8 {self.method}: not quantized: {self.note}"
        parts = [self.guard.line(advice=self.qat is None) if self.guard is not None
                 else f"accuracy: delta {100 * (self.delta or 0):+.2f} points"]
        if self.qat is not None:
            parts.append(self.qat.line())
        parts.append(self.speed.line() if self.speed is not None else "speed: not measured")
        return f"INT8 {self.method}: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with the difference, the guards' one-line verdicts and the overall verdict."""
        out = asdict(self)
        out.update(delta=self.delta, kept_in_float=list(self.kept_in_float), verdict=self.verdict,
                   guard=self.guard.to_dict() if self.guard is not None else None,
                   speed=self.speed.to_dict() if self.speed is not None else None,
                   cpu=self.cpu.to_dict() if self.cpu is not None else None,
                   qat=self.qat.to_dict() if self.qat is not None else None)
        return out

    def summary(self) -> str:
        """A few lines for the terminal."""
        if self.status != "ok":
            return f"  {self.verdict}"
        lat = ", ".join(f"{k} {v['median_ms']:.2f} ms" for k, v in self.latency.items() if v.get("median_ms") is not None)
        size = f"{self.float_size_bytes / 1e6:.2f} MB -> {self.int8_size_bytes / 1e6:.2f} MB"
        return (f"  INT8 {self.method} ({self.runtime}): {self.metric} float {100 * self.float_metric:.2f}% -> "
                f"int8 {100 * self.int8_metric:.2f}% (delta {100 * self.delta:+.2f} pts) on {self.validation}; "
                f"size {size}; median latency {lat or 'n/a'}\n    {self.verdict}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _count(sample: ImageSample) -> int:
    return sum(len(y) for _, y in sample.batches)


def _subset(sample: ImageSample) -> list[tuple[np.ndarray, np.ndarray]]:
    out, seen = [], 0
    for x, y in sample.batches:
        if seen >= SUBSET_IMAGES:
            break
        out.append((x[: SUBSET_IMAGES - seen], y[: SUBSET_IMAGES - seen]))
        seen += len(out[-1][1])
    return out


def guard_accuracy(model: nn.Module, res: QuantizationResult, build: Callable[[tuple[str, ...]], Runner],
                   float_runner: Runner, first_metric: float, calibration: ImageSample, validation: ImageSample,
                   options: Int8Options, layers: Sequence[str] | None, say: Say) -> AccuracyGuard:
    """The accuracy guard of one path: nothing to do within max_drop, else keep sensitive layers in float."""
    assert res.float_metric is not None
    drop = points(res.float_metric, first_metric)
    if options.max_drop is None or drop <= options.max_drop:
        limit = options.max_drop if options.max_drop is not None else float("inf")
        return AccuracyGuard(limit, res.float_metric, drop, (), first_metric, drop, True)
    say(f"INT8 {res.method} loses {drop:.2f} points (limit {options.max_drop:g}): ranking layers to keep in float")
    subset = _subset(validation)
    ranked = [name for name, _ in rank_layers(model, calibration.images, subset, layers)]
    return keep_in_float(ranked, build, float_runner, res.float_metric, first_metric, validation.batches, subset,
                         max_drop=options.max_drop, max_layers=options.max_float_layers, say=say)


def _time_and_judge(res: QuantizationResult, files: dict[str, tuple[str, Path]], input_shape: tuple[int, int, int],
                    options: Int8Options, diagnose: Callable[[], str]) -> None:
    """Time float and INT8 together (alternated) and give the speed verdict, diagnosed when INT8 does not pay."""
    assert res.cpu is not None
    if options.timer is None:
        res.latency = {label: {"status": "skipped", "note": "latency not measured (the export was given no timer)"}
                       for label in files}
    else:
        try:
            res.latency = options.timer(files, input_shape)
        except Exception as exc:  # timing must not fail an accuracy report
            res.latency = {label: {"status": "error", "note": _first_line(exc)} for label in files}
    res.speed = speed_verdict(res.method, res.latency, res.cpu)
    if res.speed.outcome in ("slower", "no faster"):
        try:
            diagnosis = diagnose()
        except Exception as exc:  # a diagnosis is an explanation, never a failure
            diagnosis = f"(no profile: {_first_line(exc)})"
        res.speed = speed_verdict(res.method, res.latency, res.cpu, diagnosis)


def quantize_with_ort(
    model: nn.Module, onnx_path: Path, out_path: Path, calibration: ImageSample, validation: ImageSample, *,
    input_shape: tuple[int, int, int], options: Int8Options = Int8Options(), say: Say = lambda _m: None,
) -> QuantizationResult:
    """onnxruntime static INT8 of `onnx_path`, guarded: top-1 of float and INT8 ONNX in onnxruntime, sizes, latency."""
    import onnxruntime as ort

    from nasdeploy.export.onnx_parity import onnxruntime_runner
    from nasdeploy.export.ort_int8 import OrtInt8Options, op_profile, ort_static_int8, weight_nodes

    cpu = cpu_int8_support()
    ort_options = OrtInt8Options(options.calibration, options.activations)
    res = QuantizationResult("ort", "failed", ort_options.scheme(cpu), runtime=f"onnxruntime {ort.__version__} CPU",
                             calibration=calibration.label, calibration_method=options.calibration,
                             calibration_images=_count(calibration), validation=validation.label,
                             float_file=onnx_path.name, cpu=cpu)
    nodes = weight_nodes(onnx_path)
    layers = {name[: -len(".weight")]: node for name, node in nodes.items() if name.endswith(".weight")}
    try:
        with tempfile.TemporaryDirectory(prefix="nasdeploy-int8-") as tmp:
            cache = Path(tmp) / "calibration.json"  # calibrated once; the guard's re-quantizations reuse the ranges

            def build(kept: tuple[str, ...]) -> Runner:
                ort_static_int8(onnx_path, out_path, calibration.images, options=ort_options, cache=cache,
                                nodes_to_exclude=[layers[k] for k in kept if k in layers])
                return onnxruntime_runner(out_path)[0]

            first = top1(build(()), validation.batches)
            float_runner = onnxruntime_runner(onnx_path)[0]
            res.float_metric = top1(float_runner, validation.batches)
            res.guard = guard_accuracy(model, res, build, float_runner, first, calibration, validation, options,
                                       list(layers), say)
        res.int8_metric = res.guard.int8_metric
    except Exception as exc:
        out_path.unlink(missing_ok=True)
        res.note = f"onnxruntime static quantization failed: {_first_line(exc)}"
        return res

    def diagnose() -> str:
        return profile_reason(op_profile(onnx_path, input_shape), op_profile(out_path, input_shape))

    float_bytes = sum(p.stat().st_size for p in onnx_path.parent.glob(onnx_path.name + "*"))
    _succeeded(res, model, out_path, validation, float_bytes)
    _time_and_judge(res, {"float ort-cpu-1t": ("ort-cpu-1t", onnx_path), "int8 ort-cpu-1t": ("ort-int8-cpu-1t", out_path)},
                    input_shape, options, diagnose)
    return res


def _succeeded(res: QuantizationResult, model: nn.Module, out_path: Path, validation: ImageSample,
               float_bytes: int) -> None:
    """Complete a quantization that ran: eager top-1 (the reference), file, sizes."""
    res.torch_metric = top1(torch_runner(model), validation.batches)
    res.status, res.file = "ok", out_path.name
    res.float_size_bytes, res.int8_size_bytes = float_bytes, out_path.stat().st_size


def quantize_with_executorch(
    model: nn.Module, float_pte: Path, out_path: Path, calibration: ImageSample, validation: ImageSample, *,
    input_shape: tuple[int, int, int], options: Int8Options = Int8Options(), say: Say = lambda _m: None,
) -> QuantizationResult:
    """PT2E INT8 for XNNPACK lowered to `out_path`, guarded; top-1 of the float and INT8 .pte in ExecuTorch, sizes, latency.

    The guard's trials run the converted PT2E module in PyTorch (the same Q/DQ arithmetic, no lowering per
    trial); the kept set is then lowered and its .pte scored in ExecuTorch for the reported metric.
    """
    from nasdeploy.export import executorch as et

    def convert(kept: tuple[str, ...]) -> nn.Module:
        images = (torch.from_numpy(x) for x in calibration.images)
        return et.quantize_pt2e_xnnpack(model, input_shape, images, float_modules=kept)

    cpu = cpu_int8_support()
    res = QuantizationResult("executorch", "failed", "PT2E XNNPACKQuantizer: symmetric INT8, per-channel weights, "
                             "static activations", runtime=f"executorch {et.executorch_version()} XNNPACK",
                             calibration=calibration.label, calibration_method="histogram (XNNPACKQuantizer's "
                             "HistogramObserver)", calibration_images=_count(calibration), validation=validation.label,
                             float_file=float_pte.name, cpu=cpu)
    try:
        et.lower_quantized_to_pte(convert(()), out_path, input_shape)
        first = top1(et.executorch_runner(out_path)[0], validation.batches)
        float_runner = et.executorch_runner(float_pte)[0]
        res.float_metric = top1(float_runner, validation.batches)

        def build(layers: tuple[str, ...]) -> Runner:
            return torch_runner(convert(layers), batch=1)

        guard = guard_accuracy(model, res, build, float_runner, first, calibration, validation, options, None, say)
        if guard.kept_in_float:
            et.lower_quantized_to_pte(convert(guard.kept_in_float), out_path, input_shape)
            final = top1(et.executorch_runner(out_path)[0], validation.batches)
            guard = dataclasses.replace(guard, int8_metric=final, drop=points(res.float_metric, final),
                                        within=points(res.float_metric, final) <= guard.max_drop)
        res.guard, res.int8_metric = guard, guard.int8_metric
        if options.qat_epochs and not guard.within:
            res.qat = fine_tune_executorch(model, res, out_path, calibration, validation, input_shape, options, say)
            if res.qat.kept == "qat":
                res.int8_metric = res.qat.int8_metric
    except Exception as exc:
        out_path.unlink(missing_ok=True)
        res.note = str(exc) if isinstance(exc, NasDeployError) else (
            f"PT2E quantization failed: {type(exc).__name__}: {_first_line(exc)}")
        return res
    _succeeded(res, model, out_path, validation, float_pte.stat().st_size)
    _time_and_judge(res, {"float executorch-fp32": ("executorch-fp32", float_pte),
                          "int8 executorch": ("executorch-int8", out_path)}, input_shape, options, lambda: "")
    return res


def fine_tune_executorch(model: nn.Module, res: QuantizationResult, out_path: Path, training: ImageSample,
                         validation: ImageSample, input_shape: tuple[int, int, int], options: Int8Options,
                         say: Say) -> QatRecord:
    """PT2E QAT after a guard that stayed over the limit; its .pte replaces `out_path` only when its drop is smaller.

    `training` is the run's labelled training-split sample (the calibration images); the validation images
    only score the result, as they score PTQ.
    """
    from nasdeploy.export import executorch as et
    from nasdeploy.export import int8_qat as qat

    guard = res.guard
    assert guard is not None and res.float_metric is not None
    record = QatRecord(options.qat_epochs, options.qat_lr, qat.OPTIMIZER, qat.SEED, guard.max_drop, training.label,
                       _count(training), guard.kept_in_float, guard.drop)
    say(f"INT8 executorch still loses {guard.drop:.2f} points: {options.qat_epochs} epoch(s) of quantization-aware "
        f"fine-tuning on {training.label}")
    candidate = out_path.with_name(out_path.stem + "_qat" + out_path.suffix)
    try:
        converted, losses = qat.qat_pt2e_xnnpack(model, input_shape, training.batches, epochs=options.qat_epochs,
                                                 lr=options.qat_lr, seed=qat.SEED, float_modules=guard.kept_in_float)
        et.lower_quantized_to_pte(converted, candidate, input_shape)
        metric = top1(et.executorch_runner(candidate)[0], validation.batches)
    except Exception as exc:  # QAT is a last resort: its failure leaves the PTQ model and says why
        candidate.unlink(missing_ok=True)
        why = str(exc) if isinstance(exc, NasDeployError) else f"{type(exc).__name__}: {_first_line(exc)}"
        return dataclasses.replace(record, note=why)
    drop = points(res.float_metric, metric)
    kept = "qat" if drop < guard.drop else "ptq"
    if kept == "qat":
        os.replace(candidate, out_path)
    else:
        candidate.unlink()
    say(f"QAT: drop {guard.drop:.2f} -> {drop:.2f} points; the {kept.upper()} model is kept")
    return dataclasses.replace(record, drop_after=drop, int8_metric=metric, kept=kept, losses=losses)


Quantizer = Callable[..., QuantizationResult]  # quantize_with_ort / quantize_with_executorch
