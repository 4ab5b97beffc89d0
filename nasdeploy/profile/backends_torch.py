"""PyTorch latency backends: eager on CPU (all threads / 1 thread), eager on CUDA, CUDA graphs.

Each prepares its measurement (protocol.Prepared) or says why it cannot run here; the dispatcher times them.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from nasdeploy.profile.protocol import LatencyConfig, LatencyResult, Prepared, skipped, wall_clock_ms


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Temporarily set torch's intra-op thread count (None: leave it); yields the count in use."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _input(input_shape: tuple[int, ...], cfg: LatencyConfig, device: str | torch.device = "cpu", dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(cfg.seed)
    return torch.randn((cfg.batch, *input_shape), generator=g).to(device=device, dtype=dtype)


def _cpu_eager(model: nn.Module, shape: tuple[int, ...], cfg: LatencyConfig, threads: int | None) -> Prepared:
    model = copy.deepcopy(model).cpu().eval()
    x = _input(shape, cfg)
    timed = wall_clock_ms(lambda: model(x))

    def once() -> float:
        # The thread count is set around each run, outside its timed region: measurements of other
        # backends are interleaved with this one's (protocol.run_alternated).
        with torch_threads(threads), torch.inference_mode():
            return timed()

    with torch_threads(threads) as used:
        settings = {"device": "cpu", "intra_op_threads": used, "interop_threads": torch.get_num_interop_threads(),
                    "mode": "eager, inference_mode"}
    return Prepared(once, settings)


def torch_cpu(model: nn.Module | None, onnx_path: Path | None, shape: tuple[int, ...], cfg: LatencyConfig) -> Prepared:
    """Eager PyTorch on CPU with torch's default (all physical cores) thread count."""
    assert model is not None
    return _cpu_eager(model, shape, cfg, None)


def torch_cpu_1t(model: nn.Module | None, onnx_path: Path | None, shape: tuple[int, ...], cfg: LatencyConfig) -> Prepared:
    """Eager PyTorch on CPU with torch.set_num_threads(1) (the mobile proxy)."""
    assert model is not None
    return _cpu_eager(model, shape, cfg, 1)


def _no_cuda(name: str, cfg: LatencyConfig) -> LatencyResult | None:
    if not torch.cuda.is_available():
        return skipped(name, cfg, "no CUDA device (torch.cuda.is_available() is False)")
    return None


def _cuda_settings(mode: str) -> dict[str, object]:
    return {"device": torch.cuda.get_device_name(0), "mode": mode, "timer": "CUDA events",
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}


def _on_cuda(model: nn.Module, shape: tuple[int, ...], cfg: LatencyConfig) -> tuple[nn.Module, torch.Tensor, torch.device]:
    """A copy of the model and the seeded input on cuda:0 (the caller's model stays where it was)."""
    device = torch.device("cuda", 0)
    return copy.deepcopy(model).to(device).eval(), _input(shape, cfg, device), device


def _cuda_event_ms(fn: Callable[[], object]) -> Callable[[], float]:
    """`fn` as a run_once for timed_runs on the GPU: its time between two CUDA events, in ms."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def once() -> float:
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    return once


def torch_cuda(model: nn.Module | None, onnx_path: Path | None, shape: tuple[int, ...],
               cfg: LatencyConfig) -> Prepared | LatencyResult:
    """Eager PyTorch on the GPU: input resident on the device, each run timed with CUDA events."""
    assert model is not None
    if (why := _no_cuda("torch-cuda", cfg)) is not None:
        return why
    model, x, device = _on_cuda(model, shape, cfg)
    timed = _cuda_event_ms(lambda: model(x))

    def once() -> float:
        with torch.inference_mode():
            return timed()

    torch.cuda.synchronize(device)
    return Prepared(once, _cuda_settings("eager, inference_mode"))


def torch_cuda_graph(model: nn.Module | None, onnx_path: Path | None, shape: tuple[int, ...],
                     cfg: LatencyConfig) -> Prepared | LatencyResult:
    """PyTorch on the GPU replayed from a captured CUDA graph (no per-kernel launch overhead)."""
    assert model is not None
    if (why := _no_cuda("torch-cuda-graph", cfg)) is not None:
        return why
    model, static_x, device = _on_cuda(model, shape, cfg)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad():
        # Warm up on a side stream before capture, as CUDA graph capture requires.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                model(static_x)
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        with torch.cuda.graph(graph):
            static_out = model(static_x)  # kept alive: the graph replays into this buffer
    torch.cuda.synchronize(device)
    keep = [static_out]  # the graph replays into this buffer: it must outlive the timed runs
    return Prepared(_cuda_event_ms(graph.replay), _cuda_settings("CUDA graph replay"), close=keep.clear)
