"""Parity of an exported model with its PyTorch source: per-case errors, per-output summaries and typed failures.

The comparison is the same everywhere (onnxruntime, ExecuTorch, TensorRT, the recurrent LM's windows):
|runtime - torch| <= atol_eff + rtol * |torch| elementwise, outputs of the right shape and finite. A fixed
atol ignores the output's scale: a float32 runtime differs from float32 PyTorch by about PyTorch's own
float32 rounding error, which grows with the output's magnitude and the network's depth (an untrained
DARTS_V2 failed atol 1e-5 by chance on 1 of 3 runs). So where the PyTorch model can run in float64, that
error is the yardstick: atol_eff = max(atol, k * max|torch32 - torch64|) per input and output (k =
YARDSTICK, 10; onnxruntime's error was 0.6-2x PyTorch's own on DARTS_V2, measured), still orders of
magnitude below what a wrong op changes. A report that fails names its failure by type
(OutputShapeError, NonFiniteOutputError, ToleranceError), each carrying the per-output worst errors and
the tolerances, and, where it could be found, the first diverging node; the caller decides what to do with it.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from torch import nn
from tqdm import tqdm

from nasdeploy.errors import ConfigError, ExportError
from nasdeploy.export.torch_reference import YARDSTICK, TorchReference, effective_atol

DEFAULT_BATCH_SIZES = (1, 2, 8)
DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-5
CRITERION = "|runtime - torch| <= atol + rtol * |torch| elementwise"
YARDSTICK_CRITERION = ("|runtime - torch| <= atol_eff + rtol * |torch| elementwise, atol_eff = max(atol, "
                       "{k:g} * max|torch float32 - torch float64|) per input and output")

Runner = Callable[[np.ndarray], list[np.ndarray]]


@dataclass(frozen=True)
class OutputParity:
    """Worst error of one output over all cases (NaN when it was not finite or had the wrong shape)."""

    name: str
    max_abs_err: float
    max_rel_err: float
    ok: bool


@dataclass(frozen=True)
class Divergence:
    """The first PyTorch module whose output the exported graph does not reproduce within tolerance."""

    module: str  # module path, e.g. "cells.3._ops.1.op.1"
    module_type: str
    node: str  # the exported graph's node that produces the compared tensor
    op_type: str
    max_abs_err: float
    tolerance: float  # the largest allowed error at that tensor (atol_eff + rtol * |torch|, worst element)
    compared: int  # module outputs compared in execution order up to and including this one
    note: str = ""

    def describe(self) -> str:
        """One line: where it diverges and by how much."""
        text = (f"first diverging node {self.node} ({self.op_type}) = module '{self.module}' ({self.module_type}): "
                f"max abs err {self.max_abs_err:.3e} > {self.tolerance:.3e} allowed, after {self.compared - 1} "
                f"earlier module outputs agreed")
        return text + (f"; {self.note}" if self.note else "")


class ParityError(ExportError):
    """An exported model's outputs do not match the PyTorch model's.

    `report` holds every case; `outputs` the worst errors per output; `rtol` / `atol` the tolerances;
    `divergence` the first diverging node where the check could localise it (ONNX), else None.
    """

    def __init__(self, message: str, report: "ParityReport"):
        super().__init__(message)
        self.report = report
        self.outputs: tuple[OutputParity, ...] = tuple(report.outputs)
        self.rtol, self.atol = report.rtol, report.atol
        self.divergence = report.divergence


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
    atol_eff: float | None = None  # the absolute tolerance applied (atol, or the float64 yardstick when larger)
    float64_err: float | None = None  # max |torch float32 - torch float64| (None: no float64 run)


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
    yardstick: float = 0.0  # k of atol_eff = max(atol, k * float64 error); 0: the plain atol
    divergence: Divergence | None = None  # the first diverging node of a failed check, where it was localised

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
        out["criterion"] = self.criterion
        out["first_divergence"] = self.divergence.describe() if self.divergence is not None else None
        return out

    @property
    def criterion(self) -> str:
        """The rule every case was checked by, in words."""
        return YARDSTICK_CRITERION.format(k=self.yardstick) if self.yardstick else CRITERION

    def format_table(self) -> str:
        """A fixed-width text table of the cases, for the terminal."""
        lines = [
            f"parity {self.runtime} vs PyTorch (rtol={self.rtol:g}, atol={self.atol:g}, seed={self.seed}): "
            + ("PASS" if self.passed else "FAIL"),
            f"  {'input':<20} {'output':<10} {'max abs err':>12} {'max rel err':>12} {'atol used':>10}  ok",
        ]
        for c in self.cases:
            shape = "x".join(str(s) for s in c.input_shape)
            used = f"{c.atol_eff:>10.2e}" if c.atol_eff is not None else f"{'-':>10}"
            lines.append(f"  {shape:<20} {c.output:<10} {c.max_abs_err:>12.3e} {c.max_rel_err:>12.3e} {used}  "
                         f"{'yes' if c.passed else 'NO'}")
        lines.append(f"  criterion: {self.criterion}")
        if self.divergence is not None:
            lines.append(f"  {self.divergence.describe()}")
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
            where = f"; {self.divergence.describe()}" if self.divergence is not None else ""
            return NonFiniteOutputError(f"{self.runtime} parity failed: output '{c.output}' for input {c.input_shape} "
                                        f"holds NaN or inf values {tolerances}{where}", self)
        worst = self.worst_case
        assert worst is not None
        where = f"; {self.divergence.describe()}" if self.divergence is not None else ""
        used = f", atol used {worst.atol_eff:.2e}" if worst.atol_eff is not None and worst.atol_eff != self.atol else ""
        return ToleranceError(f"{self.runtime} parity failed: max abs err {worst.max_abs_err:.3e}, max rel err "
                              f"{worst.max_rel_err:.3e} for input {worst.input_shape} output '{worst.output}' "
                              f"{tolerances[:-1]}{used}){where}", self)

    @property
    def worst_case(self) -> ParityCase | None:
        """The failed case with the largest absolute error (None when all passed)."""
        failed = [c for c in self.cases if not c.passed]
        return max(failed, key=lambda c: np.nan_to_num(c.max_abs_err, nan=np.inf)) if failed else None

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
    reference64: Sequence[np.ndarray] | None = None,
    yardstick: float = YARDSTICK,
) -> list[ParityCase]:
    """One ParityCase per output of one input: shape check, errors, finiteness and the tolerance test.

    With `reference64` (the same model's outputs in float64) the absolute tolerance is the float64 yardstick
    where that is larger than atol (see the module docstring).
    """
    cases: list[ParityCase] = []
    for k in range(max(len(expected), len(got))):
        name = output_names[k] if k < len(output_names) else f"output{k}"
        if k >= len(expected) or k >= len(got) or got[k].shape != expected[k].shape:
            out_shape = tuple(got[k].shape) if k < len(got) else ()
            cases.append(ParityCase(tuple(input_shape), name, out_shape, float("nan"), float("nan"), False, False))
            continue
        ref64 = reference64[k] if reference64 is not None and k < len(reference64) else None
        atol_eff, err64 = effective_atol(expected[k], ref64, atol, yardstick)
        abs_err, rel_err = _errors(got[k], expected[k])
        finite = bool(np.all(np.isfinite(got[k])))
        ok = finite and bool(np.allclose(got[k], expected[k], rtol=rtol, atol=atol_eff))
        cases.append(ParityCase(tuple(input_shape), name, tuple(got[k].shape), abs_err, rel_err, ok, True, finite,
                                atol_eff, err64))
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
    seed: int = 0,
    notes: Sequence[str] = (),
    yardstick: float = YARDSTICK,
) -> ParityReport:
    """Run `model` (eval mode, float32; float64 for the yardstick) and `run` on the same seeded random inputs."""
    reference = TorchReference(model, yardstick)
    cases: list[ParityCase] = []
    for x in tqdm(random_batches(input_shapes, seed), desc=f"parity {runtime}", unit="case", leave=False, disable=None):
        expected, ref64 = reference(x)
        cases.extend(compare_outputs(expected, run(x), tuple(x.shape), output_names=output_names, rtol=rtol, atol=atol,
                                     reference64=ref64, yardstick=yardstick))
    return ParityReport(runtime, model_path, rtol, atol, int(seed), tuple(cases), tuple(notes),
                        yardstick=reference.used_yardstick)


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
    yardstick: float = YARDSTICK,
) -> ParityReport:
    """Parity on given input batches (e.g. validation images): elementwise tolerance, top-1 agreement, spread.

    top-1 agreement is measured on the first output when it is [N, classes] (or [N, classes, H, W]: per pixel).
    """
    reference = TorchReference(model, yardstick)
    cases: list[ParityCase] = []
    agree, total = 0, 0
    first_outputs: list[np.ndarray] = []
    for x in batches:
        x = np.ascontiguousarray(x, dtype=np.float32)
        expected, ref64 = reference(x)
        got = run(x)
        first_outputs.append(expected[0])
        cases.extend(compare_outputs(expected, got, tuple(x.shape), output_names=output_names, rtol=rtol, atol=atol,
                                     reference64=ref64, yardstick=yardstick))
        if got and got[0].shape == expected[0].shape and expected[0].ndim in (2, 4) and expected[0].shape[1] > 1:
            agree += int((got[0].argmax(1) == expected[0].argmax(1)).sum())
            total += int(expected[0].argmax(1).size)
    return ParityReport(
        runtime, model_path, rtol, atol, int(seed), tuple(cases), tuple(notes), inputs=inputs, weights=weights,
        top1_agreement=agree / total if total else None,
        output_spread=_spread(first_outputs) if first_outputs else None, yardstick=reference.used_yardstick,
    )


def random_batches(shapes: Sequence[tuple[int, ...]], seed: int) -> list[np.ndarray]:
    """Standard-normal float32 batches of the given shapes (the random-input parity plan)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape, dtype=np.float32) for shape in shapes]
