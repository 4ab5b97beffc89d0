"""ONNX export of the recurrent language model for a fixed sequence length, checked in onnxruntime.

The graph takes `tokens` int64 [T, B] and `hidden` float32 [1, B, nhid] and returns `log_probs`
[T, B, ntokens] and `hidden_out` [1, B, nhid], so a caller streams text window by window by feeding
hidden_out back in. The parity check does exactly that over several consecutive windows, each
runtime carrying its own state, and compares every output with PyTorch.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasdeploy.errors import ExportError
from nasdeploy.nets.rnn import RNNLanguageModel
from nasdeploy.utils.files import atomic_path
from nasdeploy.utils.optional import require

INPUT_NAMES = ("tokens", "hidden")
OUTPUT_NAMES = ("log_probs", "hidden_out")


class _LMExportWrapper(nn.Module):
    """forward(tokens, hidden) -> (log_probs, hidden_out): the model without its return_h option."""

    def __init__(self, model: RNNLanguageModel):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(tokens, hidden)


@dataclass
class OutputParity:
    """Worst error of one output over all checked windows."""

    name: str
    max_abs_err: float
    max_rel_err: float
    ok: bool


@dataclass
class RNNParityReport:
    """onnxruntime vs PyTorch over consecutive windows with carried hidden state."""

    windows: int
    seq_len: int
    batch_sizes: list[int]
    rtol: float
    atol: float
    outputs: list[OutputParity] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every output within tolerance."""
        return all(o.ok for o in self.outputs)

    def summary(self) -> str:
        """One line per output."""
        return "; ".join(f"{o.name}: max abs {o.max_abs_err:.2e}, max rel {o.max_rel_err:.2e}" for o in self.outputs) + \
            f" (rtol {self.rtol}, atol {self.atol}, {self.windows} windows of {self.seq_len} tokens, batch {self.batch_sizes})"


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
    parity: RNNParityReport | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        out = asdict(self)
        if self.parity is not None:
            out["parity"]["ok"] = self.parity.ok
        return out


def export_rnn_lm_onnx(model: RNNLanguageModel, path: str | os.PathLike[str], *, seq_len: int | None = None,
                       batch_size: int = 1, dynamic_batch: bool = False, opset: int | None = None,
                       optimize: bool = False, check: bool = True, windows: int = 3, rtol: float = 1e-3,
                       atol: float = 1e-5) -> RNNExportReport:
    """Export to one ONNX file (atomic) for a fixed sequence length; check it in onnxruntime unless check=False.

    optimize=False skips the onnxscript graph optimiser, which takes most of the export time on the
    unrolled time loop (about 60% at T=35) and changes little that onnxruntime does not do itself.
    """
    require("onnx", purpose="ONNX export")
    require("onnxscript", purpose="ONNX export with torch.onnx (dynamo)")
    cfg = getattr(model, "default_cfg", None)
    seq_len = seq_len if seq_len is not None else (cfg.seq_len if cfg is not None else 35)
    if seq_len < 1 or batch_size < 1:
        raise ExportError(f"sequence length and batch size must be positive, got {seq_len} and {batch_size}")
    model = model.eval()
    wrapper = _LMExportWrapper(model).eval()
    device = next(model.parameters()).device
    tokens = torch.randint(0, model.ntokens, (seq_len, batch_size), device=device)
    hidden = 0.1 * torch.randn(1, batch_size, model.nhid, device=device)
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=4096)
        dynamic_shapes = {"tokens": {1: batch}, "hidden": {1: batch}}
    target = Path(path)
    t0 = time.perf_counter()
    try:
        with atomic_path(target) as tmp, warnings.catch_warnings():
            # Both inputs share the one batch Dim on purpose; the exporter warns that it merges the names.
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
            kwargs: dict[str, Any] = {"opset_version": opset} if opset is not None else {}
            program = torch.onnx.export(wrapper, (tokens, hidden), dynamo=True, input_names=list(INPUT_NAMES),
                                        output_names=list(OUTPUT_NAMES), dynamic_shapes=dynamic_shapes,
                                        external_data=False, optimize=optimize, verbose=False, **kwargs)
            program.save(str(tmp), external_data=False)
    except ExportError:
        raise
    except Exception as exc:  # the exporter raises many types; the user needs one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"ONNX export of the recurrent language model failed: {first}") from exc
    seconds = time.perf_counter() - t0
    onnx = require("onnx", purpose="ONNX export")
    try:
        onnx.checker.check_model(str(target), full_check=True)
    except Exception as exc:
        raise ExportError(f"{target}: the exported model fails the ONNX checker: {str(exc).splitlines()[0]}") from None
    parity = None
    if check:
        sizes = [batch_size] + ([batch_size + 2] if dynamic_batch else [])
        parity = check_rnn_onnx_parity(model, target, seq_len=seq_len, batch_sizes=sizes, windows=windows,
                                       rtol=rtol, atol=atol)
    return RNNExportReport(str(target), seq_len, batch_size, dynamic_batch, opset, model.ntokens, model.nhid,
                           target.stat().st_size, round(seconds, 3), parity)


def ort_session(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """A CPU onnxruntime session (threads=1 for the single-core 'mobile proxy' setting)."""
    ort = require("onnxruntime", purpose="running ONNX models")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def check_rnn_onnx_parity(model: RNNLanguageModel, path: str | os.PathLike[str], *, seq_len: int,
                          batch_sizes: list[int] | tuple[int, ...] = (1,), windows: int = 3, rtol: float = 1e-3,
                          atol: float = 1e-5, seed: int = 0, raise_on_fail: bool = True) -> RNNParityReport:
    """Run PyTorch and onnxruntime over `windows` consecutive windows, each carrying its own hidden state."""
    session = ort_session(path)
    model = model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    worst = {name: [0.0, 0.0, True] for name in OUTPUT_NAMES}
    for batch in batch_sizes:
        h_torch = model.init_hidden(batch)
        h_ort = h_torch.cpu().numpy()
        for _ in range(windows):
            tokens = torch.randint(0, model.ntokens, (seq_len, batch), generator=gen)
            ref_lp, h_torch = model(tokens.to(device), h_torch)
            try:
                ort_lp, h_ort = session.run(list(OUTPUT_NAMES), {"tokens": tokens.numpy(), "hidden": h_ort})
            except Exception as exc:
                raise ExportError(f"onnxruntime failed on {path} at batch {batch}: {str(exc).splitlines()[0]}") from None
            for name, ref, got in (("log_probs", ref_lp, ort_lp), ("hidden_out", h_torch, h_ort)):
                ref_np = ref.detach().cpu().numpy().astype(np.float64)
                diff = np.abs(ref_np - got.astype(np.float64))
                entry = worst[name]
                entry[0] = max(entry[0], float(diff.max()))
                entry[1] = max(entry[1], float((diff / np.maximum(np.abs(ref_np), 1e-12)).max()))
                entry[2] = entry[2] and bool(np.all(diff <= atol + rtol * np.abs(ref_np)))
    report = RNNParityReport(windows, seq_len, list(batch_sizes), rtol, atol,
                             [OutputParity(n, w[0], w[1], w[2]) for n, w in worst.items()])
    if raise_on_fail and not report.ok:
        raise ExportError(f"onnxruntime output differs from PyTorch beyond tolerance: {report.summary()}")
    return report
