"""Cost of the darts_rnn space's language model: parameters, MACs per token, latency per token.

MACs follow the project convention (multiply-accumulates of matrix products: the cell projections
and the decoder; embedding lookups, gates and softmax not counted), counted by the profiler's counter
(profile.complexity.forward_macs: FlopCounterMode total / 2) and cross-checked against the closed form
    (ninp + nhid) * 2 nhid  +  steps * nhid * 2 nhid  +  nhid * ntokens   per token.
Latency: the profiler's protocol (profile.protocol: warm-up, then median / p90 / p99 of timed runs) of
whole windows, divided by the window's tokens; also a single-token step (T = 1, the streaming case).
CPU timings use `threads` torch threads and, for onnxruntime, the shared session with `threads` threads.
profile_darts_rnn_targets is the space's profile adapter (named by its entry in the table of spaces).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from nasdeploy.errors import ConfigError
from nasdeploy.export.darts_rnn import build_darts_rnn_model
from nasdeploy.export.target import DeployTarget, deploy_target
from nasdeploy.nets.darts_rnn import DartsRnnLanguageModel
from nasdeploy.profile.complexity import TORCH_COUNTER, forward_macs
from nasdeploy.profile.protocol import LatencyConfig, LatencyResult, Prepared, measure_prepared, wall_clock_ms
from nasdeploy.profile.request import ProfileRequest
from nasdeploy.utils.ort import ort_session
from nasdeploy.utils.runtime import runtime_settings


def analytic_macs_per_token(ninp: int, nhid: int, steps: int, ntokens: int) -> int:
    """Closed-form MACs per token of the derived-cell language model."""
    return (ninp + nhid) * 2 * nhid + steps * nhid * 2 * nhid + nhid * ntokens


def count_macs_per_token(model: DartsRnnLanguageModel, seq_len: int = 35, batch_size: int = 1) -> float:
    """MACs per token of one eval-mode forward over a [seq_len, batch_size] window (profiler's counter)."""
    if seq_len < 1 or batch_size < 1:
        raise ConfigError(f"seq_len and batch_size must be positive, got {seq_len} and {batch_size}")
    device = next(model.parameters()).device
    tokens = torch.zeros(seq_len, batch_size, dtype=torch.long, device=device)
    return forward_macs(model, tokens, model.init_hidden(batch_size)) / (seq_len * batch_size)


def _window_dict(result: LatencyResult) -> dict[str, Any]:
    """LatencyResult as a dict; median_ms / p90_ms / p99_ms / runs as before, plus the shared fields."""
    if not result.ok:
        raise ConfigError(f"{result.backend}: no valid timings ({result.note})")
    return result.to_dict()


@dataclass
class DartsRnnProfile:
    """Parameters, MACs per token and latency per token of one model and setting."""

    genotype: str | None
    ntokens: int
    emsize: int
    nhid: int
    steps: int
    params: int
    params_cell: int
    params_embedding: int
    macs_per_token: float
    macs_per_token_analytic: int
    seq_len: int
    batch_size: int
    threads: int
    torch_window: dict[str, Any]  # latency of one [seq_len, batch_size] window (LatencyResult.to_dict())
    torch_ms_per_token: float  # median window time / (seq_len * batch_size)
    torch_step_ms: float  # median of one token (T = 1), batch_size sequences
    onnx_window: dict[str, Any] | None = None
    onnx_ms_per_token: float | None = None
    torch_step: dict[str, Any] | None = None  # the full statistics of the single step
    mac_counter: str = TORCH_COUNTER

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)

    def to_markdown(self) -> str:
        """A small Markdown table."""
        rows = [
            ("genotype", self.genotype or "(unnamed)"),
            ("vocabulary / emsize / nhid / nodes", f"{self.ntokens} / {self.emsize} / {self.nhid} / {self.steps}"),
            ("parameters", f"{self.params:,} (cell {self.params_cell:,}, embedding {self.params_embedding:,})"),
            ("MACs per token", f"{self.macs_per_token / 1e6:.3f} M (closed form {self.macs_per_token_analytic / 1e6:.3f} M)"),
            (f"PyTorch latency, window T={self.seq_len} B={self.batch_size}", _latency_cell(self.torch_window)),
            ("PyTorch latency per token", f"{self.torch_ms_per_token:.4f} ms"),
            (f"PyTorch single step (T=1, B={self.batch_size})", f"{self.torch_step_ms:.3f} ms"),
        ]
        if self.onnx_window is not None and self.onnx_ms_per_token is not None:
            rows.append((f"onnxruntime latency, window T={self.seq_len}", _latency_cell(self.onnx_window)))
            rows.append(("onnxruntime latency per token", f"{self.onnx_ms_per_token:.4f} ms"))
        lines = ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
        lines.append("")
        lines.append(f"MACs: multiply-accumulates of matrix products ({self.mac_counter}); CPU, {self.threads} thread(s); "
                     f"latency after {self.torch_window.get('warmup', 0)} warm-up runs.")
        return "\n".join(lines) + "\n"


def _latency_cell(window: dict[str, Any]) -> str:
    return (f"{window['median_ms']:.2f} ms median, p90 {window['p90_ms']:.2f} ms, p99 {window['p99_ms']:.2f} ms "
            f"({window['runs']} runs)")


@torch.no_grad()
def profile_darts_rnn(model: DartsRnnLanguageModel, *, seq_len: int = 35, batch_size: int = 1, warmup: int = 3,
                      runs: int = 20, threads: int = 1, onnx_path: str | os.PathLike[str] | None = None) -> DartsRnnProfile:
    """Count and time the model (CPU, eval mode); with onnx_path also time that file in onnxruntime."""
    if seq_len < 1 or batch_size < 1 or runs < 1 or threads < 1:
        raise ConfigError("seq_len, batch_size, runs and threads must be positive")
    cfg = LatencyConfig(batch=batch_size, warmup=warmup, runs=runs)
    model = model.eval()
    cell = model.rnns[0]
    params = sum(p.numel() for p in model.parameters())
    params_cell = sum(p.numel() for p in cell.parameters())
    macs = count_macs_per_token(model, seq_len, batch_size)
    analytic = analytic_macs_per_token(cell.ninp, cell.nhid, cell.steps, model.ntokens)
    tokens_per_window = seq_len * batch_size
    device = next(model.parameters()).device
    tokens = torch.randint(0, model.ntokens, (seq_len, batch_size), device=device)
    hidden = model.init_hidden(batch_size)
    with runtime_settings(threads=threads):
        settings = {"device": str(device), "intra_op_threads": threads, "seq_len": seq_len, "mode": "eager, no_grad"}
        window = measure_prepared("torch-cpu", Prepared(wall_clock_ms(lambda: model(tokens, hidden)), settings), cfg)
        step = measure_prepared("torch-cpu", Prepared(wall_clock_ms(lambda: model(tokens[:1], hidden)),
                                                      {**settings, "seq_len": 1}), cfg)
    torch_window, torch_step = _window_dict(window), _window_dict(step)
    onnx_window = onnx_per_token = None
    if onnx_path is not None:
        session = ort_session(onnx_path, threads=threads, error=ConfigError, purpose="onnxruntime latency")
        shape = session.get_inputs()[0].shape
        if isinstance(shape[0], int) and shape[0] != seq_len:
            raise ConfigError(f"{onnx_path} was exported for sequence length {shape[0]}, not {seq_len}")
        if len(shape) > 1 and isinstance(shape[1], int) and shape[1] != batch_size:
            raise ConfigError(f"{onnx_path} was exported for a fixed batch of {shape[1]}, not {batch_size}")
        feed = {"tokens": tokens.cpu().numpy(), "hidden": hidden.cpu().numpy()}
        ort_settings = {"providers": session.get_providers(), "intra_op_threads": threads, "inter_op_threads": threads,
                        "allow_spinning": "0", "seq_len": seq_len}
        result = measure_prepared("ort-cpu", Prepared(wall_clock_ms(lambda: session.run(None, feed)), ort_settings), cfg)
        onnx_window = _window_dict(result)
        onnx_per_token = onnx_window["median_ms"] / tokens_per_window
    name = getattr(getattr(model, "genotype", None), "name", None)
    return DartsRnnProfile(name, model.ntokens, cell.ninp, cell.nhid, cell.steps, params, params_cell,
                           model.encoder.weight.numel(), macs, analytic, seq_len, batch_size, threads, torch_window,
                           torch_window["median_ms"] / tokens_per_window, torch_step["median_ms"], onnx_window,
                           onnx_per_token, torch_step)


@dataclass(frozen=True)
class DartsRnnProfileReport:
    """The language-model profiles of one `nasdeploy profile` call: printed as Markdown, saved as JSON."""

    profiles: tuple[DartsRnnProfile, ...]

    def text(self, breakdown: bool | None = None) -> str:
        """One Markdown table per target (there are no per-stage breakdowns for the language model)."""
        return "\n".join(p.to_markdown() for p in self.profiles)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: a format tag and one record per target."""
        return {"format": REPORT_FORMAT, "version": 1, "targets": [p.to_dict() for p in self.profiles]}


REPORT_FORMAT = "nasdeploy.profile.darts_rnn"


def profile_darts_rnn_targets(targets: Sequence[DeployTarget | str], request: ProfileRequest) -> DartsRnnProfileReport:
    """The darts_rnn space's profile adapter: params, MACs and latency per token of each language model (a
    checkpoint's, or a fresh one of sizes.channels units and a vocabulary of sizes.num_classes words).

    PyTorch is always timed (window and single step), request.onnx_path in onnxruntime too; batch, warm-up and
    runs come from the latency config, CPU threads from request.threads (default 1).
    """
    if request.input_size is not None or request.latency:
        raise ConfigError("a darts_rnn language model is profiled with --seq-len, --batch and --threads "
                          "(--input-size and --latency do not apply; --onnx times its ONNX model)")
    if request.onnx_path is not None and len(targets) != 1:
        raise ConfigError("--onnx times one exported model: give one target with it")
    cfg = request.latency_config
    profiles = []
    for target in targets:
        model = build_darts_rnn_model(deploy_target(target), net=request.net, sizes=request.sizes)
        profiles.append(profile_darts_rnn(model, seq_len=request.seq_len or model.default_cfg.seq_len,
                                          batch_size=cfg.batch, warmup=cfg.warmup, runs=cfg.runs,
                                          threads=request.threads or 1, onnx_path=request.onnx_path))
    return DartsRnnProfileReport(tuple(profiles))
