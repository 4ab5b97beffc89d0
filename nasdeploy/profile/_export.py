"""A minimal ONNX export used only to time onnxruntime; the lead swaps it for nasdeploy.export.export_onnx."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from nasdeploy.errors import ExportError
from nasdeploy.utils.files import atomic_path

_MAX_BATCH = 4096


def _export_for_latency(model: nn.Module, input_shape: tuple[int, ...], path: str | Path) -> Path:
    """Export `model` (eval mode, dynamic batch, one file) to `path` for onnxruntime timing."""
    model = copy.deepcopy(model).cpu().eval()
    # Batch 2 as the example: torch.export specialises a dimension whose example value is 1.
    x = torch.randn(2, *input_shape)
    dynamic = {_first_arg_name(model): {0: torch.export.Dim("batch", min=1, max=_MAX_BATCH)}}
    out = Path(path)
    try:
        with atomic_path(out) as tmp, _quiet():
            torch.onnx.export(model, (x,), str(tmp), dynamo=True, external_data=False,
                              dynamic_shapes=dynamic, verbose=False)
    except Exception as exc:  # the exporter raises many types; keep the first line for the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"ONNX export of {type(model).__name__} for latency failed: {first}") from None
    return out


def _first_arg_name(model: nn.Module) -> str:
    import inspect

    params = [p for p in inspect.signature(model.forward).parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return params[0].name if params else "x"


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress prints and warnings (they would mix into the profile table)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
