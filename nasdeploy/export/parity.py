"""Parity of an exported model with its PyTorch source on fresh random inputs (onnxruntime, TensorRT)."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from nasdeploy.errors import ConfigError, ExportError
from nasdeploy.export.onnx import eval_mode, read_onnx_metadata
from nasdeploy.utils.optional import require
from nasdeploy.utils.ort import ort_session

DEFAULT_BATCH_SIZES = (1, 2, 8)
DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-5

Runner = Callable[[np.ndarray], list[np.ndarray]]


class ParityError(ExportError):
    """An exported model's outputs do not match the PyTorch model's; `report` holds every case."""

    def __init__(self, message: str, report: "ParityReport"):
        super().__init__(message)
        self.report = report


class OutputShapeError(ParityError):
    """The exported model returned a different number of outputs or different shapes."""


class ToleranceError(ParityError):
    """Outputs have the right shapes but differ by more than the tolerances (or are not finite)."""


@dataclass(frozen=True)
class ParityCase:
    """One input shape and one output: the measured errors and whether they are within tolerance."""

    input_shape: tuple[int, ...]
    output: str
    output_shape: tuple[int, ...]
    max_abs_err: float
    max_rel_err: float
    passed: bool
    shape_ok: bool = True


@dataclass(frozen=True)
class ParityReport:
    """Parity of one runtime against PyTorch over several input shapes, with the tolerances used."""

    runtime: str
    model_path: str
    rtol: float
    atol: float
    seed: int
    cases: tuple[ParityCase, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)
    inputs: str = "random normal"  # what was fed: random tensors or N validation images of a dataset
    weights: str | None = None  # "trained" | "untrained" (BN statistics randomised first) | None (as given)
    top1_agreement: float | None = None  # fraction of inputs whose argmax class agrees (classifiers on real images)
    output_spread: float | None = None  # std over inputs of the reference outputs: near 0 means a degenerate check

    @property
    def passed(self) -> bool:
        """True when every case is within tolerance."""
        return bool(self.cases) and all(c.passed for c in self.cases)

    @property
    def max_abs_err(self) -> float:
        """Largest absolute error over all cases."""
        return max((c.max_abs_err for c in self.cases), default=float("nan"))

    @property
    def max_rel_err(self) -> float:
        """Largest relative error over all cases."""
        return max((c.max_rel_err for c in self.cases), default=float("nan"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tolerances, summary, every case)."""
        out = asdict(self)
        out["cases"] = [asdict(c) for c in self.cases]
        out.update(passed=self.passed, max_abs_err=self.max_abs_err, max_rel_err=self.max_rel_err)
        out["criterion"] = "|runtime - torch| <= atol + rtol * |torch| elementwise"
        return out

    def format_table(self) -> str:
        """A fixed-width text table of the cases, for the terminal."""
        lines = [
            f"parity {self.runtime} vs PyTorch (rtol={self.rtol:g}, atol={self.atol:g}, seed={self.seed}): "
            + ("PASS" if self.passed else "FAIL"),
            f"  {'input':<20} {'output':<10} {'max abs err':>12} {'max rel err':>12}  ok",
        ]
        for c in self.cases:
            shape = "x".join(str(s) for s in c.input_shape)
            lines.append(f"  {shape:<20} {c.output:<10} {c.max_abs_err:>12.3e} {c.max_rel_err:>12.3e}  {'yes' if c.passed else 'NO'}")
        lines.append(f"  inputs: {self.inputs}" + (f"; weights: {self.weights}" if self.weights else ""))
        if self.top1_agreement is not None:
            lines.append(f"  top-1 agreement with PyTorch: {100 * self.top1_agreement:.2f}%")
        if self.output_spread is not None:
            lines.append(f"  output spread across inputs (std of PyTorch outputs): {self.output_spread:.3e}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def raise_for_failure(self) -> None:
        """Raise OutputShapeError or ToleranceError (one line naming the worst case) unless all cases pass."""
        if self.passed:
            return
        bad_shape = [c for c in self.cases if not c.shape_ok]
        if bad_shape:
            c = bad_shape[0]
            raise OutputShapeError(
                f"{self.runtime} parity failed: output '{c.output}' for input {c.input_shape} has shape "
                f"{c.output_shape} but PyTorch gives a different one", self)
        worst = max((c for c in self.cases if not c.passed), key=lambda c: (np.nan_to_num(c.max_abs_err, nan=np.inf)))
        raise ToleranceError(
            f"{self.runtime} parity failed: max abs err {worst.max_abs_err:.3e}, max rel err {worst.max_rel_err:.3e} "
            f"for input {worst.input_shape} output '{worst.output}' (tolerances rtol={self.rtol:g}, atol={self.atol:g})",
            self)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as JSON (atomically)."""
        from nasdeploy.utils.files import write_json_atomic

        return write_json_atomic(path, self.to_dict())


def second_spatial_size(height: int, width: int, min_size: int = 1) -> tuple[int, int]:
    """A smaller, odd, non-square size to check dynamic H/W with (about half the first one)."""
    return max(min_size, height // 2 + 1), max(min_size, width // 2 + 3)


def parity_shapes(
    channels: int, spatial_sizes: Sequence[tuple[int, int]], batch_sizes: Sequence[int]
) -> list[tuple[int, int, int, int]]:
    """Every (batch, C, H, W) combination to check."""
    if not batch_sizes or any(not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ConfigError(f"batch sizes must be positive integers, got {list(batch_sizes)!r}")
    return [(b, channels, h, w) for h, w in spatial_sizes for b in batch_sizes]


def _as_arrays(output: Any) -> list[np.ndarray]:
    if isinstance(output, torch.Tensor):
        return [output.detach().cpu().float().numpy()]
    if isinstance(output, (tuple, list)):
        return [a for item in output for a in _as_arrays(item)]
    if isinstance(output, dict):
        return [a for item in output.values() for a in _as_arrays(item)]
    raise ExportError(f"cannot compare a model output of type {type(output).__name__}")


def _errors(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    if diff.size == 0:
        return 0.0, 0.0
    if not np.all(np.isfinite(got)):
        return float("nan"), float("nan")
    nonzero = np.abs(ref) > 0
    rel = float((diff[nonzero] / np.abs(ref[nonzero].astype(np.float64))).max()) if nonzero.any() else 0.0
    return float(diff.max()), rel


def compare_outputs(
    expected: Sequence[np.ndarray],
    got: Sequence[np.ndarray],
    input_shape: tuple[int, ...],
    *,
    output_names: Sequence[str] = (),
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> list[ParityCase]:
    """One ParityCase per output of one input: shape check, errors, finiteness and the tolerance test."""
    cases: list[ParityCase] = []
    for k in range(max(len(expected), len(got))):
        name = output_names[k] if k < len(output_names) else f"output{k}"
        if k >= len(expected) or k >= len(got) or got[k].shape != expected[k].shape:
            out_shape = tuple(got[k].shape) if k < len(got) else ()
            cases.append(ParityCase(tuple(input_shape), name, out_shape, float("nan"), float("nan"), False, False))
            continue
        abs_err, rel_err = _errors(got[k], expected[k])
        ok = bool(np.all(np.isfinite(got[k]))) and bool(np.allclose(got[k], expected[k], rtol=rtol, atol=atol))
        cases.append(ParityCase(tuple(input_shape), name, tuple(got[k].shape), abs_err, rel_err, ok))
    return cases


def compare_with_torch(
    model: nn.Module,
    run: Runner,
    input_shapes: Sequence[tuple[int, ...]],
    *,
    runtime: str,
    model_path: str = "",
    output_names: Sequence[str] = (),
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    seed: int | None = None,
    notes: Sequence[str] = (),
) -> ParityReport:
    """Run `model` (eval mode, float32) and `run` on the same fresh random inputs; measure the differences."""
    if seed is None:
        seed = secrets.randbits(31)
    rng = np.random.default_rng(seed)
    cases: list[ParityCase] = []
    with eval_mode(model), torch.no_grad():
        for shape in tqdm(input_shapes, desc=f"parity {runtime}", unit="case", leave=False, disable=None):
            x = rng.standard_normal(shape, dtype=np.float32)
            expected = _as_arrays(model(torch.from_numpy(x.copy())))
            got = run(x)
            cases.extend(compare_outputs(expected, got, tuple(shape), output_names=output_names, rtol=rtol, atol=atol))
    return ParityReport(runtime, model_path, rtol, atol, int(seed), tuple(cases), tuple(notes))


def onnx_parity_plan(
    onnx_path: str | os.PathLike[str],
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    spatial_sizes: Sequence[tuple[int, int]] | None = None,
    min_size: int = 1,
) -> tuple[list[tuple[int, int, int, int]], list[str]]:
    """The input shapes to check an exported model at (from its metadata) and notes on what was left out."""
    meta = read_onnx_metadata(onnx_path)
    if "example_input_shape" not in meta:
        raise ConfigError(f"{onnx_path} has no nasdeploy metadata (example_input_shape); export it with export_onnx")
    _, channels, height, width = json.loads(meta["example_input_shape"])
    axes = json.loads(meta.get("dynamic_axes", "{}"))
    notes = []
    if not axes.get("batch"):
        batch_sizes = (1,)
        notes.append("batch 1 only: the model was exported with a static batch")
    if spatial_sizes is None:
        if axes.get("height") and axes.get("width"):
            spatial_sizes = [(height, width), second_spatial_size(height, width, min_size)]
        else:
            spatial_sizes = [(height, width)]
            reason = meta.get("static_reason", "static H/W")
            notes.append(f"one spatial size only: the model was exported with static H/W ({reason})")
    return parity_shapes(channels, spatial_sizes, batch_sizes), notes


def onnxruntime_runner(onnx_path: str | os.PathLike[str], providers: Sequence[str] = ("CPUExecutionProvider",)) -> tuple[Runner, list[str], str]:
    """A function running the ONNX model in onnxruntime, its output names and a runtime label."""
    ort = require("onnxruntime", purpose="ONNX parity checks")
    session = ort_session(onnx_path, providers=providers, purpose="ONNX parity checks")
    # onnxruntime silently falls back to the CPU provider when a GPU provider's libraries are missing.
    if session.get_providers()[0] != providers[0]:
        raise ExportError(f"onnxruntime could not use {providers[0]} (got {', '.join(session.get_providers())})")
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]

    def run(x: np.ndarray) -> list[np.ndarray]:
        try:
            return list(session.run(None, {input_name: x}))
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"onnxruntime failed on input {x.shape}: {first}") from exc

    return run, names, f"onnxruntime {ort.__version__} ({providers[0]})"


def check_onnx_parity(
    model: nn.Module,
    onnx_path: str | os.PathLike[str],
    *,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    spatial_sizes: Sequence[tuple[int, int]] | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    seed: int | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    raise_on_failure: bool = True,
) -> ParityReport:
    """Compare the ONNX model in onnxruntime with `model` at every batch size and spatial size.

    spatial_sizes default to the export size plus a second (odd, non-square) size when H/W are dynamic;
    a static-batch export is checked at batch 1 only.
    Raises OutputShapeError / ToleranceError on failure unless raise_on_failure is False.
    """
    shapes, notes = onnx_parity_plan(onnx_path, batch_sizes, spatial_sizes, getattr(model, "min_input_size", 1))
    run, names, label = onnxruntime_runner(onnx_path, providers)
    report = compare_with_torch(
        model, run, shapes, runtime=label, model_path=str(onnx_path),
        output_names=names, rtol=rtol, atol=atol, seed=seed, notes=notes,
    )
    if raise_on_failure:
        report.raise_for_failure()
    return report


UNTRAINED_NOTE = ("untrained weights: BN running statistics were randomised before export (set from random-input "
                  "batch statistics, then perturbed) so that outputs vary across inputs; this checks the graph, not a model")


def randomize_bn_statistics_(
    model: nn.Module, input_shape: tuple[int, ...], *, seed: int = 0, batches: int = 4, batch_size: int = 8
) -> nn.Module:
    """Give an untrained network's BatchNorms realistic, non-trivial running statistics (in place).

    At initialisation eval-mode BN is the identity and activations shrink cell after cell, so every input
    gives nearly the classifier bias and any graph "passes" parity. Here the statistics are first measured
    on random-normal batches (cumulative average), then perturbed (mean + N(0, 0.1 std), var * U(0.5, 2)).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return model
    gen = torch.Generator().manual_seed(seed)
    saved = [(m, m.momentum) for m in bns]
    was_training = model.training
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the batches below
        model.train()
        with torch.no_grad():
            for _ in range(batches):
                model(torch.randn((batch_size, *input_shape), generator=gen))
            for m in bns:
                std = m.running_var.clamp_min(1e-12).sqrt()
                m.running_mean.add_(torch.randn(m.num_features, generator=gen) * 0.1 * std)
                m.running_var.mul_(torch.rand(m.num_features, generator=gen) * 1.5 + 0.5)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was_training)
    return model


def _spread(outputs: Sequence[np.ndarray]) -> float:
    """Largest per-element std over the sample axis (how much the outputs depend on the input)."""
    stacked = np.concatenate([o.reshape(o.shape[0], -1) for o in outputs if o.ndim >= 1 and o.shape[0] > 0])
    return float(stacked.astype(np.float64).std(axis=0).max()) if stacked.shape[0] > 1 else 0.0


def compare_on_batches(
    model: nn.Module,
    run: Runner,
    batches: Sequence[np.ndarray],
    *,
    runtime: str,
    inputs: str,
    model_path: str = "",
    output_names: Sequence[str] = (),
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    seed: int = 0,
    notes: Sequence[str] = (),
    weights: str | None = None,
) -> ParityReport:
    """Parity on given input batches (e.g. validation images): elementwise tolerance, top-1 agreement, spread.

    top-1 agreement is measured on the first output when it is [N, classes] (or [N, classes, H, W]: per pixel).
    """
    cases: list[ParityCase] = []
    agree, total = 0, 0
    first_outputs: list[np.ndarray] = []
    with eval_mode(model), torch.no_grad():
        for x in batches:
            x = np.ascontiguousarray(x, dtype=np.float32)
            expected = _as_arrays(model(torch.from_numpy(x.copy())))
            got = run(x)
            first_outputs.append(expected[0])
            for k in range(max(len(expected), len(got))):
                name = output_names[k] if k < len(output_names) else f"output{k}"
                if k >= len(expected) or k >= len(got) or got[k].shape != expected[k].shape:
                    out_shape = tuple(got[k].shape) if k < len(got) else ()
                    cases.append(ParityCase(tuple(x.shape), name, out_shape, float("nan"), float("nan"), False, False))
                    continue
                abs_err, rel_err = _errors(got[k], expected[k])
                ok = bool(np.all(np.isfinite(got[k]))) and bool(np.allclose(got[k], expected[k], rtol=rtol, atol=atol))
                cases.append(ParityCase(tuple(x.shape), name, tuple(got[k].shape), abs_err, rel_err, ok))
            if got and got[0].shape == expected[0].shape and expected[0].ndim in (2, 4) and expected[0].shape[1] > 1:
                agree += int((got[0].argmax(1) == expected[0].argmax(1)).sum())
                total += int(expected[0].argmax(1).size)
    return ParityReport(
        runtime, model_path, rtol, atol, int(seed), tuple(cases), tuple(notes), inputs=inputs, weights=weights,
        top1_agreement=agree / total if total else None,
        output_spread=_spread(first_outputs) if first_outputs else None,
    )


def random_batches(shapes: Sequence[tuple[int, ...]], seed: int) -> list[np.ndarray]:
    """Standard-normal float32 batches of the given shapes (the random-input parity plan)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape, dtype=np.float32) for shape in shapes]
