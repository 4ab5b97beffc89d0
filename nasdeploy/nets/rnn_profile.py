"""Cost of the recurrent language model: parameters, MACs per token, latency per token.

MACs follow the project convention (multiply-accumulates of matrix products: the cell projections
and the decoder; embedding lookups, gates and softmax not counted), measured with torch's
FlopCounterMode (total / 2) and cross-checked against the closed form
    (ninp + nhid) * 2 nhid  +  steps * nhid * 2 nhid  +  nhid * ntokens   per token.
Latency: median / p90 / p99 of whole windows after warm-up, divided by the window's tokens; also a
single-token step (T = 1, the streaming case). CPU timings use `threads` torch threads.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from nasdeploy.errors import ConfigError
from nasdeploy.nets.rnn import RNNLanguageModel


def analytic_macs_per_token(ninp: int, nhid: int, steps: int, ntokens: int) -> int:
    """Closed-form MACs per token of the derived-cell language model."""
    return (ninp + nhid) * 2 * nhid + steps * nhid * 2 * nhid + nhid * ntokens


@torch.no_grad()
def count_macs_per_token(model: RNNLanguageModel, seq_len: int = 35, batch_size: int = 1) -> float:
    """MACs per token of one eval-mode forward, counted by FlopCounterMode (FLOPs / 2)."""
    model = model.eval()
    device = next(model.parameters()).device
    tokens = torch.zeros(seq_len, batch_size, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        model(tokens, model.init_hidden(batch_size))
    return counter.get_total_flops() / 2 / (seq_len * batch_size)


def latency_stats(fn: Callable[[], Any], warmup: int, runs: int) -> dict[str, float]:
    """Median, p90 and p99 wall time of fn() in milliseconds, after warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "p90_ms": float(np.percentile(times, 90)),
            "p99_ms": float(np.percentile(times, 99)), "runs": runs}


@dataclass
class RNNProfile:
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
    torch_window: dict[str, float]
    torch_ms_per_token: float
    torch_step_ms: float  # one token (T = 1), batch_size sequences
    onnx_window: dict[str, float] | None = None
    onnx_ms_per_token: float | None = None

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
            (f"PyTorch latency, window T={self.seq_len} B={self.batch_size}",
             f"{self.torch_window['median_ms']:.2f} ms median, p90 {self.torch_window['p90_ms']:.2f} ms"),
            ("PyTorch latency per token", f"{self.torch_ms_per_token:.4f} ms"),
            (f"PyTorch single step (T=1, B={self.batch_size})", f"{self.torch_step_ms:.3f} ms"),
        ]
        if self.onnx_window is not None and self.onnx_ms_per_token is not None:
            rows.append((f"onnxruntime latency, window T={self.seq_len}",
                         f"{self.onnx_window['median_ms']:.2f} ms median, p90 {self.onnx_window['p90_ms']:.2f} ms"))
            rows.append(("onnxruntime latency per token", f"{self.onnx_ms_per_token:.4f} ms"))
        lines = ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
        lines.append("")
        lines.append(f"MACs: multiply-accumulates of matrix products (FlopCounterMode total / 2); CPU, {self.threads} thread(s).")
        return "\n".join(lines) + "\n"


@torch.no_grad()
def profile_rnn_lm(model: RNNLanguageModel, *, seq_len: int = 35, batch_size: int = 1, warmup: int = 3,
                   runs: int = 20, threads: int = 1, onnx_path: str | os.PathLike[str] | None = None) -> RNNProfile:
    """Count and time the model (CPU, eval mode); with onnx_path also time that file in onnxruntime."""
    if seq_len < 1 or batch_size < 1 or runs < 1 or threads < 1:
        raise ConfigError("seq_len, batch_size, runs and threads must be positive")
    model = model.eval()
    cell = model.rnns[0]
    params = sum(p.numel() for p in model.parameters())
    params_cell = sum(p.numel() for p in cell.parameters())
    macs = count_macs_per_token(model, seq_len, batch_size)
    analytic = analytic_macs_per_token(cell.ninp, cell.nhid, cell.steps, model.ntokens)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        device = next(model.parameters()).device
        tokens = torch.randint(0, model.ntokens, (seq_len, batch_size), device=device)
        hidden = model.init_hidden(batch_size)
        window = latency_stats(lambda: model(tokens, hidden), warmup, runs)
        step = latency_stats(lambda: model(tokens[:1], hidden), warmup, runs)
    finally:
        torch.set_num_threads(previous_threads)
    onnx_window = onnx_per_token = None
    if onnx_path is not None:
        from nasdeploy.nets.rnn_export import ort_session

        session = ort_session(onnx_path, threads=threads)
        shape = session.get_inputs()[0].shape
        if isinstance(shape[0], int) and shape[0] != seq_len:
            raise ConfigError(f"{onnx_path} was exported for sequence length {shape[0]}, not {seq_len}")
        feed = {"tokens": tokens.cpu().numpy(), "hidden": hidden.cpu().numpy()}
        onnx_window = latency_stats(lambda: session.run(None, feed), warmup, runs)
        onnx_per_token = onnx_window["median_ms"] / (seq_len * batch_size)
    name = getattr(getattr(model, "genotype", None), "name", None)
    return RNNProfile(name, model.ntokens, cell.ninp, cell.nhid, cell.steps, params, params_cell,
                      model.encoder.weight.numel(), macs, analytic, seq_len, batch_size, threads, window,
                      window["median_ms"] / (seq_len * batch_size), step["median_ms"], onnx_window, onnx_per_token)
