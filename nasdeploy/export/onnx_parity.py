"""ONNX parity: which input shapes an exported model is checked at, its onnxruntime runner, and the check itself."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import numpy as np
from torch import nn

from nasdeploy.errors import ConfigError, ExportError
from nasdeploy.export.onnx import read_onnx_metadata
from nasdeploy.export.parity import (
    DEFAULT_ATOL,
    DEFAULT_BATCH_SIZES,
    DEFAULT_RTOL,
    ParityReport,
    Runner,
    compare_with_torch,
    parity_shapes,
    random_batches,
)
from nasdeploy.export.torch_reference import YARDSTICK
from nasdeploy.utils.optional import require
from nasdeploy.utils.ort import ort_session


def second_spatial_size(height: int, width: int, min_size: int = 1) -> tuple[int, int]:
    """A smaller, odd, non-square size to check dynamic H/W with (about half the first one)."""
    return max(min_size, height // 2 + 1), max(min_size, width // 2 + 3)


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
    seed: int = 0,
    yardstick: float = YARDSTICK,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    raise_on_failure: bool = True,
) -> ParityReport:
    """Compare the ONNX model in onnxruntime with `model` at every batch size and spatial size (seeded inputs).

    spatial_sizes default to the export size plus a second (odd, non-square) size when H/W are dynamic;
    a static-batch export is checked at batch 1 only. A failed check also names the first diverging node
    (nasdeploy.export.onnx_divergence) on the worst case's input.
    Raises the report's typed ParityError on failure unless raise_on_failure is False.
    """
    shapes, notes = onnx_parity_plan(onnx_path, batch_sizes, spatial_sizes, getattr(model, "min_input_size", 1))
    run, names, label = onnxruntime_runner(onnx_path, providers)
    report = compare_with_torch(
        model, run, shapes, runtime=label, model_path=str(onnx_path),
        output_names=names, rtol=rtol, atol=atol, seed=seed, notes=notes, yardstick=yardstick,
    )
    if not report.passed:
        report = localise_failure(model, onnx_path, report, shapes)
    if raise_on_failure:
        report.raise_for_failure()
    return report


def localise_failure(model: nn.Module, onnx_path: str | os.PathLike[str], report: ParityReport,
                     shapes: Sequence[tuple[int, ...]]) -> ParityReport:
    """The failed report with its first diverging node (or a note why none was found), on the worst case's input."""
    from nasdeploy.export.onnx_divergence import first_divergence

    bad = [c for c in report.cases if not c.passed and c.shape_ok]
    if not bad:
        return report
    worst = report.worst_case if report.worst_case in bad else bad[0]
    assert worst is not None
    x = random_batches(shapes, report.seed)[list(shapes).index(worst.input_shape)]
    try:
        found, why = first_divergence(model, onnx_path, x, rtol=report.rtol, atol=report.atol,
                                      yardstick=report.yardstick)
    except Exception as exc:  # localising is a diagnosis: it must not hide the parity failure itself
        found, why = None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    notes = report.notes if found is not None else (*report.notes, f"first diverging node not found: {why}")
    return dataclasses.replace(report, divergence=found, notes=notes)
