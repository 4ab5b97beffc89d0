#!/usr/bin/env python
"""Benchmark the mixed-op node: fused kernels vs the eager reference, in one run, interleaved.

Workload: the four nodes of a DARTS search cell (2, 3, 4 and 5 incoming mixed edges; all 8
primitives), forward + backward, batch/C/H as given; with --partial-channels K a PC-DARTS cell instead
(its four chained nodes from two C-channel inputs: ops on C/K channels, bypass, shuffle, edge
normalisation), so the kernel runs on the C/K channels. Reported per implementation: median time over
interleaved repeats, images/s, bytes saved for backward (a device-independent memory measure) and,
on CUDA, peak memory; ratios are against 'reference' measured in the same run.

  python scripts/bench_mixed_op.py --impl both --batch 32 --channels 16 --size 32 --json out.json
  python scripts/bench_mixed_op.py --impl steps            # each fusion step separately
  python scripts/bench_mixed_op.py --impl both --partial-channels 4   # a PC-DARTS K=4 cell
  python scripts/bench_mixed_op.py --bandwidth             # reduction kernel vs device copy bandwidth
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nasdeploy.genotypes.primitives import CNN_PRIMITIVES  # noqa: E402
from nasdeploy.spaces.mixing import MixedEdge, mix_node_reference  # noqa: E402
from nasdeploy.spaces.partial_channels import node_softmax, partial_cell_nodes  # noqa: E402
from nasdeploy.utils.files import write_json_atomic  # noqa: E402

NCHW = dict(channels_last=False)
STEPS = {
    "fused:reduce": dict(fold_bn=False, pools_in_kernel=False, shared_relu=False, **NCHW),
    "fused:+bn": dict(fold_bn=True, pools_in_kernel=False, shared_relu=False, **NCHW),
    "fused:+pools": dict(fold_bn=True, pools_in_kernel=True, shared_relu=False, **NCHW),
    "fused:+relu": dict(fold_bn=True, pools_in_kernel=True, shared_relu=True, **NCHW),
    "fused:+cl": dict(fold_bn=True, pools_in_kernel=True, shared_relu=True, channels_last=True),
    "fused": dict(),  # the defaults the 'fused' mixer uses
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_mixer(impl: str):
    if impl == "reference":
        return mix_node_reference
    from nasdeploy.spaces.fused_mixer import FusionOptions, make_fused_mixer
    from nasdeploy.kernels import load_mixed_node

    info = load_mixed_node()
    return make_fused_mixer(FusionOptions(**STEPS[impl]), devices=("cpu", "cuda") if info.cuda else ("cpu",))


class CellNodes:
    """The mixed edges of one search cell's four nodes, with their inputs and alphas."""

    def __init__(self, args, device: torch.device, fmt: torch.memory_format):
        g = torch.Generator().manual_seed(0)
        stride = 2 if args.reduction else 1
        size_in = args.size * stride
        self.nodes = []
        for n_edges in args.edges:
            edges = torch.nn.ModuleList(MixedEdge(CNN_PRIMITIVES, args.channels, stride) for _ in range(n_edges))
            edges = edges.to(device).to(memory_format=fmt)
            xs = [torch.randn(args.batch, args.channels, size_in, size_in, generator=g).to(device).to(memory_format=fmt)
                  for _ in range(n_edges)]
            self.nodes.append((edges, xs))
        self.alphas = (1e-3 * torch.randn(sum(args.edges), len(CNN_PRIMITIVES), generator=g)).to(device)

    def clone(self) -> "CellNodes":
        return copy.deepcopy(self)


class PartialCell:
    """A PC-DARTS cell: its mixed edges on C/K channels, the two C-channel inputs, alphas and betas."""

    def __init__(self, args, device: torch.device, fmt: torch.memory_format):
        g = torch.Generator().manual_seed(0)
        self.steps, self.groups = len(args.edges), args.partial_channels
        stride = 2 if args.reduction else 1
        size_in = args.size * stride
        edges = [MixedEdge(CNN_PRIMITIVES, args.channels // self.groups, stride if j < 2 else 1)
                 for i in range(self.steps) for j in range(2 + i)]
        self.edges = torch.nn.ModuleList(edges).to(device).to(memory_format=fmt)
        self.inputs = [torch.randn(args.batch, args.channels, size_in, size_in, generator=g).to(device)
                       .to(memory_format=fmt) for _ in range(2)]
        self.alphas = (1e-3 * torch.randn(len(edges), len(CNN_PRIMITIVES), generator=g)).to(device)
        self.betas = (1e-3 * torch.randn(len(edges), generator=g)).to(device)

    def clone(self) -> "PartialCell":
        return copy.deepcopy(self)


def partial_step_fn(cell: PartialCell, mixer) -> Callable[[], int]:
    """One forward + backward over the PC-DARTS cell's nodes; returns the bytes saved for backward."""
    alphas, betas = cell.alphas.clone().requires_grad_(True), cell.betas.clone().requires_grad_(True)
    s0, s1 = [x.clone().requires_grad_(True) for x in cell.inputs]

    def run() -> int:
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            nodes = partial_cell_nodes(mixer, s0, s1, list(cell.edges), torch.softmax(alphas, dim=-1),
                                       node_softmax(betas, cell.steps), cell.steps, cell.groups)
            loss = sum(node.square().mean() for node in nodes)
        loss.backward()
        return sum(saved.values())

    return run


def step_fn(cell: CellNodes, mixer) -> Callable[[], int]:
    """One forward + backward over the cell's nodes; returns the bytes saved for backward."""
    alphas = cell.alphas.clone().requires_grad_(True)
    xs_all = [[x.clone().requires_grad_(True) for x in xs] for _, xs in cell.nodes]

    def run() -> int:
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            weights = torch.softmax(alphas, dim=-1)
            loss = 0
            row = 0
            for (edges, _), xs in zip(cell.nodes, xs_all):
                out = mixer(xs, list(edges), weights[row:row + len(edges)])
                row += len(edges)
                loss = loss + out.square().mean()
        loss.backward()
        return sum(saved.values())

    return run


def bench_impls(args) -> dict:
    device = torch.device(args.device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    impls = {"both": ["reference", "fused"], "steps": ["reference", *STEPS]}.get(args.impl, [args.impl])
    if args.partial_channels > 1:
        cell = PartialCell(args, device, fmt)
        runs = {impl: partial_step_fn(cell.clone(), make_mixer(impl)) for impl in impls}
    else:
        base = CellNodes(args, device, fmt)
        runs = {impl: step_fn(base.clone(), make_mixer(impl)) for impl in impls}
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    saved: dict[str, int] = {}
    peak: dict[str, int] = {}
    for impl, run in runs.items():  # warm-up (and the JIT build, if any)
        for _ in range(args.warmup):
            run()
    for _ in range(args.repeats):  # interleaved, so load from other processes hits all alike
        for impl, run in runs.items():
            if device.type == "cuda":
                sync(device)
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            start = time.perf_counter()
            saved[impl] = run()
            sync(device)
            times[impl].append(time.perf_counter() - start)
            if device.type == "cuda":
                peak[impl] = torch.cuda.max_memory_allocated(device)
    results = {}
    for impl in impls:
        med = statistics.median(times[impl])
        results[impl] = {
            "median_ms": 1e3 * med,
            "min_ms": 1e3 * min(times[impl]),
            "max_ms": 1e3 * max(times[impl]),
            "images_per_s": args.batch / med,
            "saved_bytes": saved[impl],
            **({"peak_bytes": peak[impl]} if impl in peak else {}),
        }
    ref = results.get("reference")
    if ref:
        for impl, r in results.items():
            r["speedup_vs_reference"] = ref["median_ms"] / r["median_ms"]
            r["saved_bytes_vs_reference"] = r["saved_bytes"] / ref["saved_bytes"]
            if "peak_bytes" in r:
                r["peak_bytes_vs_reference"] = r["peak_bytes"] / ref["peak_bytes"]
    return results


def bench_bandwidth(args) -> dict:
    """The node reduction alone (raw terms, one launch) against a device copy of the same bytes."""
    from nasdeploy.kernels import Term, TermKind, mixed_node

    device = torch.device(args.device)
    shape = (args.batch, args.channels, args.size, args.size)
    n_terms = args.terms
    zs = [torch.randn(shape, device=device) for _ in range(n_terms)]
    weights = torch.rand(1, n_terms, device=device)
    terms = [Term(TermKind.RAW, 0, t) for t in range(n_terms)]
    src = torch.randn(n_terms * zs[0].numel(), device=device)
    dst = torch.empty_like(src)

    def reduce_once():
        mixed_node([zs[0]], [1], zs, weights, terms)

    def copy_once():
        dst.copy_(src)

    timings = {"reduce": [], "copy": []}
    for fn in (reduce_once, copy_once):
        fn()
    for _ in range(args.repeats):
        for name, fn in (("reduce", reduce_once), ("copy", copy_once)):
            sync(device)
            start = time.perf_counter()
            for _ in range(args.inner):
                fn()
            sync(device)
            timings[name].append((time.perf_counter() - start) / args.inner)
    elem = zs[0].element_size() * zs[0].numel()
    reduce_bytes = (n_terms + 1) * elem  # every z read once, the output written once
    copy_bytes = 2 * n_terms * elem
    reduce_bw = reduce_bytes / statistics.median(timings["reduce"])
    copy_bw = copy_bytes / statistics.median(timings["copy"])
    return {
        "terms": n_terms,
        "shape": list(shape),
        "reduce_GBps": reduce_bw / 1e9,
        "copy_GBps": copy_bw / 1e9,
        "fraction_of_copy": reduce_bw / copy_bw,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impl", default="both", choices=["reference", "fused", "both", "steps", *STEPS])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--size", type=int, default=32, help="node output height/width")
    p.add_argument("--edges", type=lambda s: [int(v) for v in s.split(",")], default=[2, 3, 4, 5])
    p.add_argument("--reduction", action="store_true", help="stride-2 edges (reduction cell)")
    p.add_argument("--partial-channels", type=int, default=1,
                   help="K > 1: a PC-DARTS cell (ops on C/K channels; --edges gives the node count only)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--bandwidth", action="store_true", help="measure the reduction kernel's bandwidth instead")
    p.add_argument("--terms", type=int, default=14, help="raw terms in the bandwidth test")
    p.add_argument("--inner", type=int, default=20, help="calls per timing in the bandwidth test")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    report = {
        "benchmark": "bandwidth" if args.bandwidth else "mixed_op",
        "device": device_name(device),
        "torch": torch.__version__,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    if args.bandwidth:
        report["results"] = r = bench_bandwidth(args)
        print(f"{report['device']}: reduction {r['reduce_GBps']:.1f} GB/s, copy {r['copy_GBps']:.1f} GB/s, "
              f"{100 * r['fraction_of_copy']:.0f}% of copy bandwidth")
    else:
        report["results"] = results = bench_impls(args)
        print(f"{report['device']}  batch {args.batch}  C {args.channels}  {args.size}x{args.size}  "
              f"edges {args.edges}  {'reduction' if args.reduction else 'normal'}"
              f"{f'  PC-DARTS K={args.partial_channels}' if args.partial_channels > 1 else ''}"
              f"{'  channels_last' if args.channels_last else ''}")
        print(f"{'impl':<14}{'median ms':>11}{'img/s':>10}{'speedup':>9}{'saved MB':>10}{'saved x':>9}")
        for impl, r in results.items():
            print(f"{impl:<14}{r['median_ms']:>11.2f}{r['images_per_s']:>10.1f}{r.get('speedup_vs_reference', 1):>9.2f}"
                  f"{r['saved_bytes'] / 2**20:>10.1f}{r.get('saved_bytes_vs_reference', 1):>9.2f}")
    if args.json:
        write_json_atomic(args.json, report)
    return report


if __name__ == "__main__":
    main()
