"""The PyTorch side of a parity check: its outputs as arrays, in float32 and, for the yardstick, in float64.

Where the model runs in float64 too, max|torch32 - torch64| measures PyTorch's own float32 rounding error on
that input; nasdeploy.export.parity allows a runtime a fixed multiple of it (see its docstring).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from nasdeploy.errors import ExportError
from nasdeploy.export.onnx import eval_mode

YARDSTICK = 10.0  # k: the runtime may differ from float32 PyTorch by k times PyTorch's own float32 error


def as_arrays(output: Any, dtype: type = np.float32) -> list[np.ndarray]:
    """A model output (tensor, or nested tuples / lists / dicts of them) as a flat list of float arrays."""
    if isinstance(output, torch.Tensor):
        return [output.detach().cpu().numpy().astype(dtype, copy=False)]
    if isinstance(output, (tuple, list)):
        return [a for item in output for a in as_arrays(item, dtype)]
    if isinstance(output, dict):
        return [a for item in output.values() for a in as_arrays(item, dtype)]
    raise ExportError(f"cannot compare a model output of type {type(output).__name__}")


def effective_atol(expected: np.ndarray, reference64: np.ndarray | None, atol: float,
                   yardstick: float = YARDSTICK) -> tuple[float, float | None]:
    """(atol_eff, float64 error): max(atol, yardstick * max|expected - reference64|), or atol without a float64 run."""
    if reference64 is None or reference64.shape != expected.shape or not yardstick:
        return atol, None
    err = float(np.abs(expected.astype(np.float64) - reference64).max()) if expected.size else 0.0
    if not math.isfinite(err):
        return atol, None
    return max(atol, yardstick * err), err


def float64_twin(model: nn.Module) -> nn.Module | None:
    """An eval-mode float64 copy of `model` (the yardstick's reference), or None when it cannot run in float64."""
    try:
        return copy.deepcopy(model).double().eval()
    except Exception:  # a model that cannot be copied or cast is checked with the plain atol
        return None


class TorchReference:
    """The PyTorch side of a parity check: float32 outputs, and float64 ones for the yardstick where possible."""

    def __init__(self, model: nn.Module, yardstick: float = YARDSTICK):
        self.model = model
        self.yardstick = yardstick
        self.twin = float64_twin(model) if yardstick else None

    def __call__(self, x: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """(float32 outputs, float64 outputs or None) of one input batch."""
        with eval_mode(self.model), torch.no_grad():
            expected = as_arrays(self.model(torch.from_numpy(x.copy())))
            if self.twin is None:
                return expected, None
            try:
                return expected, as_arrays(self.twin(torch.from_numpy(x.astype(np.float64))), np.float64)
            except Exception:  # an op without a float64 kernel: this model is checked with the plain atol
                self.twin = None
                return expected, None

    @property
    def used_yardstick(self) -> float:
        """The yardstick factor in effect (0 when the model could not run in float64)."""
        return self.yardstick if self.twin is not None else 0.0
