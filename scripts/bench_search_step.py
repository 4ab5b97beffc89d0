#!/usr/bin/env python
"""Benchmark whole DARTS search steps: fused mixed-op kernels vs the eager reference, same run.

One step = the architecture step (first or second order) + the weight step, exactly
nasdeploy.search.loop.search_step, on random CIFAR-shaped batches. Both implementations start from
the same weights; steps are interleaved (reference, fused, reference, ...) and medians reported,
with images/s, peak CUDA memory (on GPU) and bytes saved for backward by one training forward.

  python scripts/bench_search_step.py --device cuda --impl both --order first --json first.json
  python scripts/bench_search_step.py --device cpu --batch 16 --channels 8 --layers 5 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_mixed_op import device_name, sync  # noqa: E402
from nasdeploy.search.architect import Architect, ArchitectConfig  # noqa: E402
from nasdeploy.search.loop import classification_loss, search_step  # noqa: E402
from nasdeploy.spaces.darts_cnn import DartsSupernet  # noqa: E402
from nasdeploy.utils.files import write_json_atomic  # noqa: E402


def make_setup(impl: str, args, device: torch.device):
    torch.manual_seed(0)
    model = DartsSupernet(channels=args.channels, layers=args.layers, mixed_op=impl).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = model.weight_parameters()
    opt = torch.optim.SGD(params, lr=0.025, momentum=0.9, weight_decay=3e-4)
    architect = Architect(model, classification_loss, opt, ArchitectConfig(order=args.order))
    return model, params, opt, architect


def saved_bytes(model, batch) -> int:
    """Bytes autograd keeps for backward in one training forward (device-independent memory measure)."""
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = classification_loss(model, batch)
    del loss
    return sum(saved.values())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impl", default="both", choices=["reference", "fused", "both"])
    p.add_argument("--order", default="first", choices=["first", "second"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels-last", action="store_true", help="model and inputs channels-last for both impls")
    p.add_argument("--steps", type=int, default=5, help="timed steps per implementation")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    impls = ["reference", "fused"] if args.impl == "both" else [args.impl]

    g = torch.Generator().manual_seed(1)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format

    def batch():
        x = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device).to(memory_format=fmt)
        return x, torch.randint(0, 10, (args.batch,), generator=g).to(device)

    batches = [(batch(), batch()) for _ in range(2)]
    setups = {impl: make_setup(impl, args, device) for impl in impls}
    times = {impl: [] for impl in impls}
    peak = {}
    for i in range(args.warmup + args.steps):
        for impl, (model, params, opt, architect) in setups.items():
            train, val = batches[i % 2]
            if device.type == "cuda":
                sync(device)
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            start = time.perf_counter()
            search_step(model, architect, opt, params, train, val, lr=0.025, grad_clip=5.0)
            sync(device)
            if i >= args.warmup:
                times[impl].append(time.perf_counter() - start)
                if device.type == "cuda":
                    peak[impl] = max(peak.get(impl, 0), torch.cuda.max_memory_allocated(device))
    results = {}
    for impl, (model, *_rest) in setups.items():
        med = statistics.median(times[impl])
        results[impl] = {"median_s": med, "min_s": min(times[impl]), "images_per_s": args.batch / med,
                         "saved_bytes": saved_bytes(model, batches[0][0]),
                         **({"peak_bytes": peak[impl]} if impl in peak else {})}
    if "reference" in results and "fused" in results:
        ref, fused = results["reference"], results["fused"]
        fused["speedup_vs_reference"] = ref["median_s"] / fused["median_s"]
        fused["saved_bytes_vs_reference"] = fused["saved_bytes"] / ref["saved_bytes"]
        if "peak_bytes" in fused:
            fused["peak_bytes_vs_reference"] = fused["peak_bytes"] / ref["peak_bytes"]
        dist = max((a - b).abs().max().item() for a, b in zip(setups["reference"][0].arch_parameters(),
                                                             setups["fused"][0].arch_parameters()))
        fused["max_alpha_difference"] = dist
    report = {"benchmark": "search_step", "device": device_name(device), "torch": torch.__version__,
              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "results": results}
    print(f"{report['device']}  {args.order}-order search step  batch {args.batch}  C {args.channels}  "
          f"{args.layers} cells  {args.size}x{args.size}{'  channels_last' if args.channels_last else ''}")
    print(f"{'impl':<11}{'median s':>10}{'img/s':>9}{'speedup':>9}{'peak MB':>9}{'peak x':>8}{'saved MB':>10}")
    for impl, r in results.items():
        peak_mb = f"{r['peak_bytes'] / 2**20:>9.0f}" if "peak_bytes" in r else f"{'-':>9}"
        peak_x = f"{r.get('peak_bytes_vs_reference', 1):>8.2f}" if "peak_bytes" in r else f"{'-':>8}"
        print(f"{impl:<11}{r['median_s']:>10.3f}{r['images_per_s']:>9.1f}{r.get('speedup_vs_reference', 1):>9.2f}"
              f"{peak_mb}{peak_x}{r['saved_bytes'] / 2**20:>10.1f}")
    if "fused" in results and "max_alpha_difference" in results["fused"]:
        print(f"alphas after {args.warmup + args.steps} steps differ by at most {results['fused']['max_alpha_difference']:.2e}")
    if args.json:
        write_json_atomic(args.json, report)
    return report


if __name__ == "__main__":
    main()
