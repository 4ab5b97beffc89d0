#!/usr/bin/env python
"""Time DARTS CNN or Auto-DeepLab search steps (architecture step + weight step) and report JSON.

Reports per order and mixed-op implementation: median/mean step time, images/s (training images of
the weight step per second; the architecture step's batch is extra work, not counted), peak memory
(CUDA max allocated on GPU; peak RSS of this process on CPU, reset before each timed step where Linux
allows) and the bytes autograd saves for backward. With several implementations ('both' = reference
and fused) the steps are interleaved and "comparisons" gives fused vs reference from the same run.

    python scripts/bench_search.py --order first second --steps 10 --out bench.json
    python scripts/bench_search.py --impl both --order first second --device cuda --out fused_vs_ref.json
    python scripts/bench_search.py --impl both --partial-channels 4 --out pcdarts.json   # PC-DARTS K=4 supernet
    python scripts/bench_search.py --space autodeeplab --impl both --order first --channels 8 --layers 12 \
        --blocks 5 --image-size 64 --batch-size 2    # the paper's supernet (F=8, L=12, B=5) on small crops
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from nasdeploy.config.autodeeplab import AutoDeepLabSupernetConfig
from nasdeploy.search.architect import Architect, ArchitectConfig
from nasdeploy.search.step import classification_loss, search_step
from nasdeploy.spaces.autodeeplab import AutoDeepLabSupernet
from nasdeploy.spaces.darts_cnn import DartsCnnSupernet
from nasdeploy.utils.distributed import resolve_device


def _reset_cpu_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) so each measurement has its own peak; False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _cpu_peak_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def build_supernet(space: str, impl: str, channels: int, layers: int, blocks: int, num_classes: int,
                   partial_channels: int = 1, recompute_op_bodies: bool | None = None) -> torch.nn.Module:
    """The supernet to time: DARTS CNN (C = channels; PC-DARTS with partial_channels > 1) or Auto-DeepLab
    (F = channels, B = blocks)."""
    if space == "autodeeplab":
        return AutoDeepLabSupernet(AutoDeepLabSupernetConfig(layers=layers, filter_multiplier=channels, blocks=blocks,
                                                     num_classes=num_classes, mixed_op=impl))
    return DartsCnnSupernet(channels=channels, num_classes=num_classes, layers=layers, mixed_op=impl,
                         partial_channels=partial_channels, recompute_op_bodies=recompute_op_bodies)


class _StepBench:
    """One order x mixed-op implementation: its model, optimisers, batches and timings."""

    def __init__(self, order: str, impl: str, *, batch_size: int, channels: int, layers: int, image_size: int,
                 num_classes: int, device: str, seed: int, batches_needed: int, space: str = "darts_cnn",
                 blocks: int = 5, partial_channels: int = 1, recompute_op_bodies: bool | None = None):
        self.dev = resolve_device(device)
        self.order, self.batch_size, self.space = order, batch_size, space
        torch.manual_seed(seed)  # the same initial weights and alphas for every implementation
        self.model = build_supernet(space, impl, channels, layers, blocks, num_classes, partial_channels,
                                    recompute_op_bodies).to(self.dev)
        self.impl = getattr(self.model, "mixed_op", None) or self.model.mixer_name
        self.weight_params = list(self.model.weight_parameters())
        self.w_opt = torch.optim.SGD(self.weight_params, 0.025, momentum=0.9, weight_decay=3e-4)
        self.architect = Architect(self.model, classification_loss, self.w_opt, ArchitectConfig(order=order))
        gen = torch.Generator().manual_seed(seed)

        def batch() -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.randn(batch_size, 3, image_size, image_size, generator=gen)
            # Per-pixel labels for segmentation (cross entropy takes both shapes).
            shape = (batch_size,) if space == "darts_cnn" else (batch_size, image_size, image_size)
            y = torch.randint(0, num_classes, shape, generator=gen)
            return x.to(self.dev), y.to(self.dev)

        self.batches = [(batch(), batch()) for _ in range(min(batches_needed, 4))]
        self.times: list[float] = []
        self.peak = 0
        self.reset_ok = True
        self.done = 0

    def step(self, timed: bool) -> None:
        """One search step; timed ones also record the peak memory of that step."""
        cuda = self.dev.type == "cuda"
        if timed:
            if cuda:
                torch.cuda.synchronize(self.dev)
                torch.cuda.reset_peak_memory_stats(self.dev)
            else:
                self.reset_ok = _reset_cpu_peak() and self.reset_ok
        train_batch, arch_batch = self.batches[self.done % len(self.batches)]
        self.done += 1
        t0 = time.perf_counter()
        search_step(self.model, self.architect, self.w_opt, self.weight_params, train_batch, arch_batch, 0.025, 5.0)
        if cuda:
            torch.cuda.synchronize(self.dev)
        if timed:
            self.times.append(time.perf_counter() - t0)
            self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.dev) if cuda else _cpu_peak_bytes())

    def saved_bytes(self) -> int:
        """Bytes autograd keeps for backward in one training forward (a device-independent memory measure)."""
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = classification_loss(self.model, self.batches[0][0])
        del loss
        return sum(saved.values())

    def result(self, warmup: int) -> dict[str, Any]:
        median = statistics.median(self.times)
        if self.dev.type == "cuda":
            memory = {"peak_memory_bytes": self.peak, "memory_kind": "cuda_max_allocated"}
        else:
            memory = {"peak_memory_bytes": self.peak,
                      "memory_kind": "cpu_peak_rss" if self.reset_ok else "cpu_peak_rss_process_lifetime"}
        return {"space": self.space, "order": self.order, "impl": self.impl, "steps": len(self.times), "warmup": warmup,
                "step_time_s_median": median, "step_time_s_mean": statistics.fmean(self.times),
                "step_time_s_min": min(self.times), "images_per_s": self.batch_size / median,
                "saved_bytes": self.saved_bytes(), **memory}


def bench_impls(order: str, impls: list[str], *, steps: int = 10, warmup: int = 2, batch_size: int = 64,
                channels: int = 16, layers: int = 8, image_size: int = 32, num_classes: int = 10,
                device: str = "auto", seed: int = 0, space: str = "darts_cnn", blocks: int = 5,
                partial_channels: int = 1) -> list[dict[str, Any]]:
    """Time `steps` search steps after `warmup` untimed ones per implementation, the implementations
    interleaved step by step (so load from other processes hits them alike); one result each."""
    benches = [_StepBench(order, impl, batch_size=batch_size, channels=channels, layers=layers,
                          image_size=image_size, num_classes=num_classes, device=device, seed=seed,
                          batches_needed=steps + warmup, space=space, blocks=blocks,
                          partial_channels=partial_channels) for impl in impls]
    for i in range(warmup + steps):
        for b in benches:
            b.step(timed=i >= warmup)
    results = [b.result(warmup) for b in benches]
    if len(benches) > 1:
        first = torch.cat([a.detach().flatten() for a in benches[0].model.arch_parameters()])
        for b, r in zip(benches[1:], results[1:]):
            other = torch.cat([a.detach().flatten() for a in b.model.arch_parameters()])
            r["max_alpha_difference_vs_" + results[0]["impl"]] = (other - first).abs().max().item()
    return results


def bench_one(order: str, impl: str, **kwargs: Any) -> dict[str, Any]:
    """Time search steps of one order and one mixed-op implementation."""
    return bench_impls(order, [impl], **kwargs)[0]


def compare(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fused vs reference per order, from the same run: speed, peak memory and saved-bytes ratios."""
    rows = []
    for order in dict.fromkeys(r["order"] for r in results):
        by_impl = {r["impl"]: r for r in results if r["order"] == order}
        if "reference" in by_impl and "fused" in by_impl:
            ref, fused = by_impl["reference"], by_impl["fused"]
            rows.append({"order": order, "speedup": ref["step_time_s_median"] / fused["step_time_s_median"],
                         "peak_memory_ratio": fused["peak_memory_bytes"] / ref["peak_memory_bytes"],
                         "saved_bytes_ratio": fused["saved_bytes"] / ref["saved_bytes"],
                         "max_alpha_difference": fused.get("max_alpha_difference_vs_reference")})
    return rows


def environment(device: str) -> dict[str, Any]:
    """Where the numbers were measured."""
    dev = resolve_device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    return {"device": str(dev), "device_name": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="darts_cnn", choices=["darts_cnn", "autodeeplab"])
    p.add_argument("--blocks", type=int, default=5, help="Auto-DeepLab blocks per cell")
    p.add_argument("--partial-channels", type=int, default=1, help="DARTS CNN: PC-DARTS K (1 = plain DARTS)")
    p.add_argument("--order", nargs="+", default=["first", "second"], choices=["first", "second"])
    p.add_argument("--impl", nargs="+", default=["reference"], choices=["reference", "fused", "auto", "both"],
                   help="mixed-op implementations; 'both' = reference and fused, interleaved, with their ratios")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "benchmark": f"{args.space}_search_step",
        "images_per_s_definition": "weight-step batch size / median step time (architecture batch not counted)",
        "environment": environment(args.device),
        "config": {"space": args.space, "blocks": args.blocks if args.space == "autodeeplab" else None,
                   "batch_size": args.batch_size, "channels": args.channels, "layers": args.layers,
                   "image_size": args.image_size, "steps": args.steps, "warmup": args.warmup,
                   "partial_channels": args.partial_channels if args.space == "darts_cnn" else None},
        "results": [],
    }
    impls = list(dict.fromkeys(i for name in args.impl for i in (["reference", "fused"] if name == "both" else [name])))
    for order in args.order:
        for r in bench_impls(order, impls, steps=args.steps, warmup=args.warmup, batch_size=args.batch_size,
                             channels=args.channels, layers=args.layers, image_size=args.image_size,
                             device=args.device, space=args.space, blocks=args.blocks,
                             partial_channels=args.partial_channels,
                             num_classes=19 if args.space == "autodeeplab" else 10):
            report["results"].append(r)
            print(f"{order:>6} order  {r['impl']:<9}  step {r['step_time_s_median'] * 1e3:9.1f} ms  "
                  f"{r['images_per_s']:8.1f} img/s  peak {r['peak_memory_bytes'] / 2**20:8.1f} MiB ({r['memory_kind']})"
                  f"  saved {r['saved_bytes'] / 2**20:8.1f} MiB", file=sys.stderr)
    report["comparisons"] = compare(report["results"])
    for c in report["comparisons"]:
        print(f"{c['order']:>6} order  fused vs reference: {c['speedup']:.2f}x images/s, "
              f"{c['peak_memory_ratio']:.2f}x peak memory, {c['saved_bytes_ratio']:.2f}x saved activations, "
              f"alphas differ by {c['max_alpha_difference']:.1e}", file=sys.stderr)
    text = json.dumps(report, indent=2)
    if args.out:
        from nasdeploy.utils.files import write_text_atomic

        write_text_atomic(args.out, text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
