"""Parity of an exported model with its PyTorch source: per-case errors, per-output summaries and typed failures.

The comparison is the same everywhere (onnxruntime, ExecuTorch, TensorRT, the recurrent LM's windows):
|runtime - torch| <= atol + rtol * |torch| elementwise, outputs of the right shape and finite. A report
that fails names its failure by type (OutputShapeError, NonFiniteOutputError, ToleranceError), each
carrying the per-output worst errors and the tolerances; the caller decides what to do with it.
"""

from __future__ import annotations

import math
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
from nasdeploy.export.onnx import eval_mode

DEFAULT_BATCH_SIZES = (1, 2, 8)
DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-5
CRITERION = "|runtime - torch| <= atol + rtol * |torch| elementwise"

Runner = Callable[[np.ndarray], list[np.ndarray]]


@dataclass(frozen=True)
class OutputParity:
    """Worst error of one output over all cases (NaN when it was not finite or had the wrong shape)."""

    name: str
    max_abs_err: float
    max_rel_err: float
    ok: bool


class ParityError(ExportError):
    """An exported model's outputs do not match the PyTorch model's.

    `report` holds every case; `outputs` the worst errors per output; `rtol` / `atol` the tolerances.
    """

    def __init__(self, message: str, report: "ParityReport"):
        super().__init__(message)
        self.report = report
        self.outputs: tuple[OutputParity, ...] = tuple(report.outputs)
        self.rtol, self.atol = report.rtol, report.atol


class OutputShapeError(ParityError):
    """The exported model returned a different number of outputs or different shapes."""


class NonFiniteOutputError(ParityError):
    """The exported model returned NaN or infinite values where PyTorch did not fail the same way."""


class ToleranceError(ParityError):
    """Outputs have the right shapes and are finite but differ by more than the tolerances."""


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
    finite: bool = True  # the runtime's output holds no NaN / inf


def _worst(values: Sequence[float]) -> float:
    """The largest value, NaN if any is NaN (a non-finite output must not hide behind max())."""
    return math.nan if any(math.isnan(v) for v in values) else max(values, default=math.nan)


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

    @property
    def outputs(self) -> list[OutputParity]:
        """Per output name (in order of appearance): worst errors over every case and whether all passed."""
        out = []
        for name in dict.fromkeys(c.output for c in self.cases):
            cases = [c for c in self.cases if c.output == name]
            out.append(OutputParity(name, _worst([c.max_abs_err for c in cases]),
                                    _worst([c.max_rel_err for c in cases]), all(c.passed for c in cases)))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tolerances, summary, every case)."""
        out = asdict(self)
        out["cases"] = [asdict(c) for c in self.cases]
        out.update(passed=self.passed, max_abs_err=self.max_abs_err, max_rel_err=self.max_rel_err)
        out["outputs"] = [asdict(o) for o in self.outputs]
        out["criterion"] = CRITERION
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

    def failure(self) -> ParityError | None:
        """The typed error of a failed report (one line naming the worst case), or None when it passed."""
        if self.passed:
            return None
        tolerances = f"(tolerances rtol={self.rtol:g}, atol={self.atol:g})"
        bad_shape = [c for c in self.cases if not c.shape_ok]
        if bad_shape:
            c = bad_shape[0]
            return OutputShapeError(f"{self.runtime} parity failed: output '{c.output}' for input {c.input_shape} has "
                                    f"shape {c.output_shape} but PyTorch gives a different one", self)
        not_finite = [c for c in self.cases if not c.finite]
        if not_finite:
            c = not_finite[0]
            return NonFiniteOutputError(f"{self.runtime} parity failed: output '{c.output}' for input {c.input_shape} "
                                        f"holds NaN or inf values {tolerances}", self)
        worst = max((c for c in self.cases if not c.passed), key=lambda c: np.nan_to_num(c.max_abs_err, nan=np.inf))
        return ToleranceError(f"{self.runtime} parity failed: max abs err {worst.max_abs_err:.3e}, max rel err "
                              f"{worst.max_rel_err:.3e} for input {worst.input_shape} output '{worst.output}' {tolerances}",
                              self)

    def raise_for_failure(self) -> None:
        """Raise the report's typed ParityError unless all cases pass."""
        error = self.failure()
        if error is not None:
            raise error

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as JSON (atomically)."""
        from nasdeploy.utils.files import write_json_atomic

        return write_json_atomic(path, self.to_dict())


def parity_shapes(
    channels: int, spatial_sizes: Sequence[tuple[int, int]], batch_sizes: Sequence[int]
) -> list[tuple[int, int, int, int]]:
    """Every (batch, C, H, W) combination to check."""
    if not batch_sizes or any(not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ConfigError(f"batch sizes must be positive integers, got {list(batch_sizes)!r}")
    return [(b, channels, h, w) for h, w in spatial_sizes for b in batch_sizes]


def as_arrays(output: Any) -> list[np.ndarray]:
    """A model output (tensor, or nested tuples / lists / dicts of them) as a flat list of float arrays."""
    if isinstance(output, torch.Tensor):
        return [output.detach().cpu().float().numpy()]
    if isinstance(output, (tuple, list)):
        return [a for item in output for a in as_arrays(item)]
    if isinstance(output, dict):
        return [a for item in output.values() for a in as_arrays(item)]
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
        finite = bool(np.all(np.isfinite(got[k])))
        ok = finite and bool(np.allclose(got[k], expected[k], rtol=rtol, atol=atol))
        cases.append(ParityCase(tuple(input_shape), name, tuple(got[k].shape), abs_err, rel_err, ok, True, finite))
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
            expected = as_arrays(model(torch.from_numpy(x.copy())))
            got = run(x)
            cases.extend(compare_outputs(expected, got, tuple(shape), output_names=output_names, rtol=rtol, atol=atol))
    return ParityReport(runtime, model_path, rtol, atol, int(seed), tuple(cases), tuple(notes))


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
            expected = as_arrays(model(torch.from_numpy(x.copy())))
            got = run(x)
            first_outputs.append(expected[0])
            cases.extend(compare_outputs(expected, got, tuple(x.shape), output_names=output_names, rtol=rtol, atol=atol))
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
