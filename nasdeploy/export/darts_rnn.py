"""ONNX export of the darts_rnn space's language model for a fixed sequence length, checked in onnxruntime.

The graph takes `tokens` int64 [T, B] and `hidden` float32 [1, B, nhid] and returns `log_probs`
[T, B, ntokens] and `hidden_out` [1, B, nhid], so a caller streams text window by window by feeding
hidden_out back in. The parity check does exactly that over several consecutive windows, each
runtime carrying its own state, and compares every output with PyTorch through the shared
comparison of nasdeploy.export.parity (one error definition, typed failures, non-finite outputs fail).
export_darts_rnn_target is the space's export adapter (named by its entry in the table of spaces).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from nasdeploy.errors import CheckpointError, ConfigError, ExportError
from nasdeploy.export.artifacts import ExportResult, Progress, write_export_report
from nasdeploy.export.onnx import MIN_OPSET, eval_mode
from nasdeploy.export.parity import DEFAULT_ATOL, DEFAULT_RTOL, OutputParity, ParityCase, ParityReport, compare_outputs
from nasdeploy.export.request import ExportRequest, NetSizes
from nasdeploy.export.source import default_name, same_cells
from nasdeploy.export.staging import staged_folder
from nasdeploy.export.target import DeployTarget, deploy_target, network_for
from nasdeploy.genotypes import genotype_to_dict
from nasdeploy.nets.darts_rnn import DartsRnnLanguageModel
from nasdeploy.utils.files import atomic_path
from nasdeploy.utils.optional import require
from nasdeploy.utils.ort import ort_session

INPUT_NAMES = ("tokens", "hidden")
OUTPUT_NAMES = ("log_probs", "hidden_out")


class _ExportWrapper(nn.Module):
    """forward(tokens, hidden) -> (log_probs, hidden_out): the model without its return_h option."""

    def __init__(self, model: DartsRnnLanguageModel):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(tokens, hidden)


@dataclass(frozen=True)
class DartsRnnParityReport:
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
        return self.report.outputs

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


    def raise_for_failure(self) -> None:
        """The shared report's typed ParityError, its message listing every output's worst errors."""
        error = self.report.failure()
        if error is not None:
            raise type(error)(f"onnxruntime output differs from PyTorch beyond tolerance: {self.summary()}", self.report)


@dataclass
class DartsRnnExportReport:
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
    parity: DartsRnnParityReport | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        out = {k: getattr(self, k) for k in ("path", "seq_len", "batch_size", "dynamic_batch", "opset", "ntokens",
                                             "nhid", "file_bytes", "export_seconds")}
        out["parity"] = self.parity.to_dict() if self.parity is not None else None
        return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def export_darts_rnn_onnx(model: DartsRnnLanguageModel, path: str | os.PathLike[str], *, seq_len: int | None = None,
                          batch_size: int = 1, dynamic_batch: bool = False, opset: int | None = None,
                          optimize: bool = False, check: bool = True, windows: int = 3, rtol: float = DEFAULT_RTOL,
                          atol: float = DEFAULT_ATOL) -> DartsRnnExportReport:
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
        wrapper = _ExportWrapper(model).eval()
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
            parity = check_darts_rnn_parity(model, target, seq_len=seq_len, batch_sizes=sizes, windows=windows,
                                            rtol=rtol, atol=atol)
    return DartsRnnExportReport(str(target), seq_len, batch_size, dynamic_batch, opset, model.ntokens, model.nhid,
                           target.stat().st_size, round(seconds, 3), parity)


@torch.no_grad()
def check_darts_rnn_parity(model: DartsRnnLanguageModel, path: str | os.PathLike[str], *, seq_len: int,
                           batch_sizes: Sequence[int] = (1,), windows: int = 3, rtol: float = DEFAULT_RTOL,
                           atol: float = DEFAULT_ATOL, seed: int | None = 0, raise_on_fail: bool = True) -> DartsRnnParityReport:
    """Run PyTorch and onnxruntime over `windows` consecutive windows, each carrying its own hidden state.

    Every window's outputs go through export.parity.compare_outputs (elementwise atol + rtol * |torch|,
    non-finite onnxruntime outputs fail); raise_on_fail raises the typed ParityError with the summary.
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
    inputs = f"random tokens: {windows} consecutive windows of {seq_len} tokens per batch size, hidden state carried"
    report = DartsRnnParityReport(windows, seq_len, list(batch_sizes),
                                  ParityReport(label, str(path), rtol, atol, int(seed), tuple(cases), inputs=inputs))
    if raise_on_fail:
        report.raise_for_failure()
    return report



def build_darts_rnn_model(target: DeployTarget, *, net: str | None = None,
                          sizes: NetSizes = NetSizes()) -> DartsRnnLanguageModel:
    """The language model of a target: its checkpoint's (the sizes given must match), else a fresh one.

    A fresh model takes sizes.channels as emsize = nhid and sizes.num_classes as the vocabulary (defaults: the
    published model); a language model has no layers to set.
    """
    channels, num_classes = sizes.channels, sizes.num_classes
    from nasdeploy.nets.darts_rnn import NET_NAME, build_darts_rnn_network, load_darts_rnn_network

    if net not in (None, NET_NAME):
        network_for(target, net, prefer=net)  # names the kind another family builds, or an unknown family
        raise ConfigError(f"the {target.space.name} space has one network ('{NET_NAME}'), not '{net}'")
    if sizes.layers is not None:
        raise ConfigError(f"the {target.space.name} language model has one recurrent cell: --layers does not apply")
    if target.checkpoint is None:
        sizes = {k: v for k, v in (("emsize", channels), ("nhid", channels)) if v is not None}
        return build_darts_rnn_network(target.genotype, num_classes, **sizes).eval()
    model = load_darts_rnn_network(target.checkpoint)
    where = f"checkpoint {target.checkpoint}"
    if not same_cells(model.genotype, target.genotype):
        raise CheckpointError(f"{where} was trained for {model.genotype.name or 'a different genotype'}, which "
                              f"differs from the target '{target.given}'")
    for key, value, saved in (("channels", channels, model.nhid), ("num_classes", num_classes, model.ntokens)):
        if value is not None and value != saved:
            raise CheckpointError(f"{where} has {key}={saved}, but {key}={value} was requested")
    return model


def export_darts_rnn_target(request: ExportRequest, progress: Progress | None = None) -> ExportResult:
    """The darts_rnn space's export adapter: out_dir gets model.onnx, parity_onnx.json and export.json.

    ONNX only: another format, INT8 or a dataset is a one-line ConfigError; options.darts_rnn sets the window.
    """
    options = request.options
    if request.formats != ("onnx",):
        raise ConfigError("the darts_rnn language model exports to ONNX only (no other --format)")
    request.refuse_data("the darts_rnn language model has no INT8 path and no dataset parity (ONNX with random tokens)")
    if options.input_size is not None:
        raise ConfigError("the darts_rnn language model takes --seq-len and --batch-size, not --input-size")
    resolved = deploy_target(request.target, request.checkpoint)
    model = build_darts_rnn_model(resolved, net=request.net, sizes=request.sizes)
    name = options.name or default_name(resolved.genotype.name, "language_model")
    out = Path(request.out_dir) if request.out_dir is not None else Path("exports") / name
    seq, cfg = options.darts_rnn, model.default_cfg
    source = {"target": resolved.given, "genotype": resolved.genotype.name, "checkpoint": resolved.checkpoint,
              "net_kwargs": cfg.to_dict(), "genotype_dict": genotype_to_dict(resolved.genotype)}
    result = ExportResult(out, name, ("onnx",), source=source, weights="trained" if resolved.checkpoint else "untrained")
    with staged_folder(out, "export", overwrite=options.overwrite) as stage:
        if progress is not None:
            progress(f"exporting the language model to ONNX (window {seq.seq_len or cfg.seq_len}, batch {seq.batch_size}"
                     f"{' dynamic' if seq.dynamic_batch else ''}) and checking it in onnxruntime")
        report = export_darts_rnn_onnx(model, stage / "model.onnx", seq_len=seq.seq_len, batch_size=seq.batch_size,
                                       dynamic_batch=seq.dynamic_batch, opset=options.onnx.opset, windows=seq.windows,
                                       rtol=options.parity.rtol, atol=options.parity.atol)
        assert report.parity is not None
        parity = dataclasses.replace(report.parity.report, model_path="model.onnx", weights=result.weights)
        parity.save(stage / "parity_onnx.json")
        result.parity["onnx"] = parity
        result.files.update(onnx="model.onnx", onnx_parity="parity_onnx.json")
        batch = "batch" if report.dynamic_batch else report.batch_size
        result.onnx = {"opset": _opset(stage / "model.onnx"), "input_shape": [report.seq_len, batch],
                       "dynamic_axes": {"batch": report.dynamic_batch}, "size_bytes": report.file_bytes}
        result.timings_s["onnx_export"] = report.export_seconds
        write_export_report(stage, result)
    return result


def _opset(path: Path) -> int:
    """The default-domain opset an ONNX file was written with."""
    onnx = require("onnx", purpose="reading ONNX files")
    proto = onnx.load(str(path), load_external_data=False)
    return int(next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")))
