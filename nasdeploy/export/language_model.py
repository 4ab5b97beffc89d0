"""ONNX export of the recurrent language model for a fixed sequence length, checked in onnxruntime.

The graph takes `tokens` int64 [T, B] and `hidden` float32 [1, B, nhid] and returns `log_probs`
[T, B, ntokens] and `hidden_out` [1, B, nhid], so a caller streams text window by window by feeding
hidden_out back in. The parity check does exactly that over several consecutive windows, each
runtime carrying its own state, and compares every output with PyTorch through the shared
comparison of nasdeploy.export.parity (one error definition, non-finite outputs fail).
"""

from __future__ import annotations

import math
import os
import secrets
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from nasdeploy.errors import ConfigError, ExportError
from nasdeploy.export.onnx import MIN_OPSET, eval_mode
from nasdeploy.export.parity import DEFAULT_ATOL, DEFAULT_RTOL, ParityCase, ParityReport, compare_outputs
from nasdeploy.nets.rnn import RNNLanguageModel
from nasdeploy.utils.files import atomic_path
from nasdeploy.utils.optional import require
from nasdeploy.utils.ort import ort_session

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "LMParityReport",
    "OutputParity",
    "RNNExportReport",
    "RNNParityReport",
    "check_rnn_onnx_parity",
    "export_rnn_lm_onnx",
    "ort_session",
]

INPUT_NAMES = ("tokens", "hidden")
OUTPUT_NAMES = ("log_probs", "hidden_out")


class _LMExportWrapper(nn.Module):
    """forward(tokens, hidden) -> (log_probs, hidden_out): the model without its return_h option."""

    def __init__(self, model: RNNLanguageModel):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(tokens, hidden)


@dataclass(frozen=True)
class OutputParity:
    """Worst error of one output over all checked windows and batch sizes (NaN when an output was not finite)."""

    name: str
    max_abs_err: float
    max_rel_err: float
    ok: bool


def _worst(values: Sequence[float]) -> float:
    """The largest value, NaN if any is NaN (a non-finite output must not hide behind max())."""
    return math.nan if any(math.isnan(v) for v in values) else max(values, default=math.nan)


@dataclass(frozen=True)
class LMParityReport:
    """onnxruntime vs PyTorch over consecutive windows with carried hidden state; cases as in ParityReport."""

    windows: int
    seq_len: int
    batch_sizes: list[int]
    report: ParityReport  # one case per (batch size, window, output), in that order

    @property
    def rtol(self) -> float:
        """Relative tolerance of the elementwise test |ort - torch| <= atol + rtol * |torch|."""
        return self.report.rtol

    @property
    def atol(self) -> float:
        """Absolute tolerance of the elementwise test."""
        return self.report.atol

    @property
    def outputs(self) -> list[OutputParity]:
        """Per output name: worst errors over every case and whether every case passed."""
        names = list(dict.fromkeys(c.output for c in self.report.cases))
        out = []
        for name in names:
            cases = [c for c in self.report.cases if c.output == name]
            out.append(OutputParity(name, _worst([c.max_abs_err for c in cases]),
                                    _worst([c.max_rel_err for c in cases]), all(c.passed for c in cases)))
        return out

    @property
    def ok(self) -> bool:
        """Every output of every window within tolerance, finite and of the right shape."""
        return self.report.passed

    def summary(self) -> str:
        """One line: worst errors per output and the settings checked."""
        return "; ".join(f"{o.name}: max abs {o.max_abs_err:.2e}, max rel {o.max_rel_err:.2e}" for o in self.outputs) + \
            f" (rtol {self.rtol}, atol {self.atol}, {self.windows} windows of {self.seq_len} tokens, batch {self.batch_sizes})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the summary fields, per-output worst errors and every case of the shared report."""
        shared = self.report.to_dict()
        return {"windows": self.windows, "seq_len": self.seq_len, "batch_sizes": list(self.batch_sizes),
                "rtol": self.rtol, "atol": self.atol, "outputs": [asdict(o) for o in self.outputs], "ok": self.ok,
                "runtime": shared["runtime"], "seed": shared["seed"], "criterion": shared["criterion"],
                "cases": shared["cases"]}


RNNParityReport = LMParityReport  # the name used before the move to nasdeploy.export


@dataclass
class RNNExportReport:
    """What was exported and how well it matched."""

    path: str
    seq_len: int
    batch_size: int
    dynamic_batch: bool
    opset: int | None
    ntokens: int
    nhid: int
    file_bytes: int
    export_seconds: float
    parity: LMParityReport | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        out = {k: getattr(self, k) for k in ("path", "seq_len", "batch_size", "dynamic_batch", "opset", "ntokens",
                                             "nhid", "file_bytes", "export_seconds")}
        out["parity"] = self.parity.to_dict() if self.parity is not None else None
        return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def export_rnn_lm_onnx(model: RNNLanguageModel, path: str | os.PathLike[str], *, seq_len: int | None = None,
                       batch_size: int = 1, dynamic_batch: bool = False, opset: int | None = None,
                       optimize: bool = False, check: bool = True, windows: int = 3, rtol: float = DEFAULT_RTOL,
                       atol: float = DEFAULT_ATOL) -> RNNExportReport:
    """Export to one ONNX file (atomic) for a fixed sequence length; check it in onnxruntime unless check=False.

    optimize=False skips the onnxscript graph optimiser, which takes most of the export time on the
    unrolled time loop (about 60% at T=35) and changes little that onnxruntime does not do itself.
    """
    onnx = require("onnx", purpose="ONNX export")
    require("onnxscript", purpose="ONNX export with torch.onnx (dynamo)")
    cfg = getattr(model, "default_cfg", None)
    seq_len = seq_len if seq_len is not None else (cfg.seq_len if cfg is not None else 35)
    if seq_len < 1 or batch_size < 1:
        raise ExportError(f"sequence length and batch size must be positive, got {seq_len} and {batch_size}")
    if opset is not None and (not isinstance(opset, int) or opset < MIN_OPSET):
        raise ConfigError(f"opset must be an integer >= {MIN_OPSET} (the dynamo ONNX exporter's minimum), got {opset!r}")
    if windows < 1:
        raise ConfigError(f"parity windows must be positive, got {windows}")
    device = next(model.parameters()).device
    tokens = torch.randint(0, model.ntokens, (seq_len, batch_size), device=device)
    hidden = 0.1 * torch.randn(1, batch_size, model.nhid, device=device)
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=4096)
        dynamic_shapes = {"tokens": {1: batch}, "hidden": {1: batch}}
    target = Path(path)
    t0 = time.perf_counter()
    with eval_mode(model):
        wrapper = _LMExportWrapper(model).eval()
        try:
            with atomic_path(target) as tmp, warnings.catch_warnings():
                # Both inputs share the one batch Dim on purpose; the exporter warns that it merges the names.
                warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
                kwargs: dict[str, Any] = {"opset_version": opset} if opset is not None else {}
                program = torch.onnx.export(wrapper, (tokens, hidden), dynamo=True, input_names=list(INPUT_NAMES),
                                            output_names=list(OUTPUT_NAMES), dynamic_shapes=dynamic_shapes,
                                            external_data=False, optimize=optimize, verbose=False, **kwargs)
                program.save(str(tmp), external_data=False)
                seconds = time.perf_counter() - t0
                try:  # check before the rename, so a file that fails the checker never appears
                    onnx.checker.check_model(str(tmp), full_check=True)
                except Exception as exc:
                    raise ExportError(f"{target}: the exported model fails the ONNX checker: {_first_line(exc)}") from None
        except ExportError:
            raise
        except Exception as exc:  # the exporter raises many types; the user needs one line
            raise ExportError(f"ONNX export of the recurrent language model failed: {_first_line(exc)}") from exc
        parity = None
        if check:
            sizes = [batch_size] + ([batch_size + 2] if dynamic_batch else [])
            parity = check_rnn_onnx_parity(model, target, seq_len=seq_len, batch_sizes=sizes, windows=windows,
                                           rtol=rtol, atol=atol)
    return RNNExportReport(str(target), seq_len, batch_size, dynamic_batch, opset, model.ntokens, model.nhid,
                           target.stat().st_size, round(seconds, 3), parity)


@torch.no_grad()
def check_rnn_onnx_parity(model: RNNLanguageModel, path: str | os.PathLike[str], *, seq_len: int,
                          batch_sizes: Sequence[int] = (1,), windows: int = 3, rtol: float = DEFAULT_RTOL,
                          atol: float = DEFAULT_ATOL, seed: int | None = 0, raise_on_fail: bool = True) -> LMParityReport:
    """Run PyTorch and onnxruntime over `windows` consecutive windows, each carrying its own hidden state.

    Every window's outputs go through export.parity.compare_outputs (elementwise atol + rtol * |torch|,
    non-finite onnxruntime outputs fail); raise_on_fail raises ExportError with the summary.
    """
    if not batch_sizes or any(not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ConfigError(f"batch sizes must be positive integers, got {list(batch_sizes)!r}")
    ort = require("onnxruntime", purpose="ONNX parity checks")
    session = ort_session(path, purpose="ONNX parity checks")
    if seed is None:
        seed = secrets.randbits(31)
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    cases: list[ParityCase] = []
    with eval_mode(model):
        for batch in batch_sizes:
            h_torch = model.init_hidden(batch)
            h_ort = h_torch.cpu().numpy()
            for _ in range(windows):
                tokens = torch.randint(0, model.ntokens, (seq_len, batch), generator=gen)
                ref_lp, h_torch = model(tokens.to(device), h_torch)
                try:
                    got = session.run(list(OUTPUT_NAMES), {"tokens": tokens.numpy(), "hidden": h_ort})
                except Exception as exc:
                    raise ExportError(f"onnxruntime failed on {path} at batch {batch}: {_first_line(exc)}") from None
                expected = [ref_lp.detach().cpu().float().numpy(), h_torch.detach().cpu().float().numpy()]
                cases.extend(compare_outputs(expected, got, (seq_len, batch), output_names=OUTPUT_NAMES,
                                             rtol=rtol, atol=atol))
                h_ort = got[1]
    label = f"onnxruntime {ort.__version__} ({session.get_providers()[0]})"
    report = LMParityReport(windows, seq_len, list(batch_sizes),
                            ParityReport(label, str(path), rtol, atol, int(seed), tuple(cases)))
    if raise_on_fail and not report.ok:
        raise ExportError(f"onnxruntime output differs from PyTorch beyond tolerance: {report.summary()}")
    return report
