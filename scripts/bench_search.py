#!/usr/bin/env python
"""Time DARTS CNN search steps (architecture step + weight step) and report JSON.

Reports per order and mixed-op implementation: median/mean step time, images/s (training images of
the weight step per second; the architecture step's batch is extra work, not counted) and peak memory
(CUDA max allocated on GPU; peak RSS of this process on CPU, reset before each measurement where Linux
allows). This is the baseline the fused mixed-op kernels must beat.

    python scripts/bench_search.py --order first second --steps 10 --out bench.json
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

from nasdeploy.search.architect import Architect, ArchitectConfig
from nasdeploy.search.loop import classification_loss, search_step
from nasdeploy.spaces.darts_cnn import DartsSupernet
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


def bench_one(order: str, impl: str, *, steps: int = 10, warmup: int = 2, batch_size: int = 64, channels: int = 16,
              layers: int = 8, image_size: int = 32, num_classes: int = 10, device: str = "auto",
              seed: int = 0) -> dict[str, Any]:
    """Time `steps` search steps after `warmup` untimed ones; one order and one mixed-op implementation."""
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = DartsSupernet(channels=channels, num_classes=num_classes, layers=layers, mixed_op=impl).to(dev)
    weight_params = model.weight_parameters()
    w_opt = torch.optim.SGD(weight_params, 0.025, momentum=0.9, weight_decay=3e-4)
    architect = Architect(model, classification_loss, w_opt, ArchitectConfig(order=order))
    gen = torch.Generator().manual_seed(seed)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(batch_size, 3, image_size, image_size, generator=gen)
        y = torch.randint(0, num_classes, (batch_size,), generator=gen)
        return x.to(dev), y.to(dev)

    batches = [(batch(), batch()) for _ in range(min(steps + warmup, 4))]
    cuda = dev.type == "cuda"
    times = []
    for i in range(warmup + steps):
        if i == warmup:
            if cuda:
                torch.cuda.synchronize(dev)
                torch.cuda.reset_peak_memory_stats(dev)
            else:
                reset_ok = _reset_cpu_peak()
        train_batch, arch_batch = batches[i % len(batches)]
        t0 = time.perf_counter()
        search_step(model, architect, w_opt, weight_params, train_batch, arch_batch, 0.025, 5.0)
        if cuda:
            torch.cuda.synchronize(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    if cuda:
        memory = {"peak_memory_bytes": torch.cuda.max_memory_allocated(dev), "memory_kind": "cuda_max_allocated"}
    else:
        memory = {"peak_memory_bytes": _cpu_peak_bytes(),
                  "memory_kind": "cpu_peak_rss" if reset_ok else "cpu_peak_rss_process_lifetime"}
    return {"order": order, "impl": model.mixed_op, "steps": steps, "warmup": warmup,
            "step_time_s_median": median, "step_time_s_mean": statistics.fmean(times),
            "step_time_s_min": min(times), "images_per_s": batch_size / median, **memory}


def environment(device: str) -> dict[str, Any]:
    """Where the numbers were measured."""
    dev = resolve_device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    return {"device": str(dev), "device_name": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--order", nargs="+", default=["first", "second"], choices=["first", "second"])
    p.add_argument("--impl", nargs="+", default=["reference"], help="mixed-op implementations (reference, fused, auto)")
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
        "benchmark": "darts_cnn_search_step",
        "images_per_s_definition": "weight-step batch size / median step time (architecture batch not counted)",
        "environment": environment(args.device),
        "config": {"batch_size": args.batch_size, "channels": args.channels, "layers": args.layers,
                   "image_size": args.image_size, "steps": args.steps, "warmup": args.warmup},
        "results": [],
    }
    for order in args.order:
        for impl in args.impl:
            r = bench_one(order, impl, steps=args.steps, warmup=args.warmup, batch_size=args.batch_size,
                          channels=args.channels, layers=args.layers, image_size=args.image_size, device=args.device)
            report["results"].append(r)
            print(f"{order:>6} order  {r['impl']:<9}  step {r['step_time_s_median'] * 1e3:9.1f} ms  "
                  f"{r['images_per_s']:8.1f} img/s  peak {r['peak_memory_bytes'] / 2**20:8.1f} MiB ({r['memory_kind']})",
                  file=sys.stderr)
    text = json.dumps(report, indent=2)
    if args.out:
        from nasdeploy.utils.files import write_text_atomic

        write_text_atomic(args.out, text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
