#!/usr/bin/env python
"""PC-DARTS (partial channels K) vs plain DARTS search steps, same supernet and batch: time, peak RSS, largest batch.

Every measurement runs in a child process of its own, so its peak RSS (the child's ru_maxrss) belongs
to that configuration alone; the configurations alternate round by round (so load from other
processes hits them alike) and the report gives medians over rounds and ratios against the first K
(1 = plain DARTS), and the bytes one forward keeps for backward by the part of the supernet that keeps
them. With --mem-cap-mib it also finds, per K, the largest batch whose search step stays under that
peak RSS (doubling, then bisection, each probe a child process that is stopped as soon as its RSS
passes the cap).

    python scripts/bench_pcdarts.py --threads 1 --json benchmarks/cpu/pcdarts_vs_darts_1thread.json
    python scripts/bench_pcdarts.py --threads 1 --mem-cap-mib 2048 --rounds 0      # only the batch search
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS.parent))


# -- child: one configuration ------------------------------------------------------------------------

def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# Which part of the supernet kept a tensor for backward: by the innermost module, else by the code that ran.
PREPROCESS = "preprocess (ReLU-conv-BN, full width)"
_CODE_PARTS = {"mixed_node.py": "mixer kernel (edge inputs, conv terms)", "fused_mixer.py": "mixer ReLU per edge",
               "partial_channels.py": "PC-DARTS bypass and shuffle", "_MaxPool2x2": "PC-DARTS bypass and shuffle",
               "lean_conv_body": "candidate op bodies", "_ReluConvNorm": PREPROCESS, "lean_preprocess": PREPROCESS,
               "mixing.py": "reference mixer"}


def _part(module: str) -> str | None:
    names = module.split(".")
    if "preprocess0" in names or "preprocess1" in names:
        return PREPROCESS
    if "_ops" in names:
        return "candidate op bodies"
    return "stem and classifier" if names[0] in ("stem", "classifier") else None


def saved_by_part(model: Any, images: Any) -> dict[str, int]:
    """Bytes autograd keeps for backward in one training forward, by the part that kept them (each storage counted
    once, for the first part that saved it)."""
    import torch
    from torch.nn import functional as F

    stack: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda _m, _i, name=name: stack.append(name)) for name, m in model.named_modules()]
    hooks += [m.register_forward_hook(lambda _m, _i, _o: (stack.pop(), None)[1]) for m in model.modules()]
    seen: dict[int, str] = {}
    totals: dict[str, int] = {}

    def pack(t: Any) -> Any:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            part = _part(stack[-1]) if stack else None
            frame = sys._getframe(1)
            while part is None and frame is not None:
                code = frame.f_code
                part = _CODE_PARTS.get(code.co_qualname.split(".")[0]) or _CODE_PARTS.get(Path(code.co_filename).name)
                frame = frame.f_back
            part = part or "other"
            seen[storage.data_ptr()] = part
            totals[part] = totals.get(part, 0) + storage.nbytes()
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = F.cross_entropy(model(images[0]), images[1])
        del loss
    finally:
        for h in hooks:
            h.remove()
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


RECOMPUTE = {"auto": None, "on": True, "off": False}


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Time `steps` search steps after `warmup` of one configuration in this process; its peak RSS."""
    import torch

    sys.path.insert(0, str(SCRIPTS))
    from bench_search import _StepBench  # noqa: E402  (scripts/ sibling)

    torch.set_num_threads(spec["threads"])
    baseline = _rss_bytes()
    bench = _StepBench(spec["order"], spec["impl"], batch_size=spec["batch_size"], channels=spec["channels"],
                       layers=spec["layers"], image_size=spec["image_size"], num_classes=10, device="cpu",
                       seed=spec["seed"], batches_needed=spec["steps"] + spec["warmup"],
                       partial_channels=spec["partial_channels"],
                       recompute_op_bodies=RECOMPUTE[spec.get("recompute_op_bodies", "auto")]
                       if spec["partial_channels"] > 1 else None)
    for i in range(spec["warmup"] + spec["steps"]):
        bench.step(timed=i >= spec["warmup"])
    out = {"times_s": bench.times, "impl": bench.impl, "baseline_rss_bytes": baseline,
           "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if spec.get("saved_bytes"):
        out["saved_bytes"] = bench.saved_bytes()
        out["saved_bytes_by_part"] = saved_by_part(bench.model, bench.batches[0][0])
    return out


# -- parent: children, rounds, the batch search ------------------------------------------------------

def spawn(spec: dict[str, Any], cap_bytes: int | None = None, timeout: float = 3600.0) -> dict[str, Any] | None:
    """Run one child; None when its RSS passed `cap_bytes` (it is killed at once) or it failed."""
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    status = Path(f"/proc/{proc.pid}/status")
    start = time.monotonic()
    while proc.poll() is None:
        if cap_bytes is not None:
            try:
                rss = next(int(line.split()[1]) * 1024 for line in status.read_text().splitlines()
                           if line.startswith("VmRSS:"))
            except (OSError, StopIteration):
                rss = 0
            if rss > cap_bytes:
                proc.kill()
                proc.communicate()
                return None
        if time.monotonic() - start > timeout:
            proc.kill()
            proc.communicate()
            raise RuntimeError(f"child {spec} ran past {timeout} s")
        time.sleep(0.02)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"child {spec} failed:\n{stderr[-2000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    if cap_bytes is not None and result["peak_rss_bytes"] > cap_bytes:
        return None
    return result


def compare(spec: dict[str, Any], ks: list[int], rounds: int) -> dict[str, Any]:
    """Rounds of one child per K (order alternating each round); medians and ratios against ks[0]."""
    runs: dict[int, list[dict[str, Any]]] = {k: [] for k in ks}
    for r in range(rounds):
        for k in (ks if r % 2 == 0 else ks[::-1]):
            res = spawn({**spec, "partial_channels": k, "saved_bytes": r == 0})
            assert res is not None
            runs[k].append(res)
            print(f"round {r + 1}/{rounds}  K={k}  step {statistics.median(res['times_s']):7.2f} s  "
                  f"peak RSS {res['peak_rss_bytes'] / 2**20:7.0f} MiB", file=sys.stderr)
    results = []
    for k in ks:
        times = [t for res in runs[k] for t in res["times_s"]]
        per_round = [statistics.median(res["times_s"]) for res in runs[k]]
        results.append({"partial_channels": k, "impl": runs[k][0]["impl"], "step_time_s_median": statistics.median(per_round),
                        "step_times_s": times, "peak_rss_bytes": int(statistics.median(res["peak_rss_bytes"] for res in runs[k])),
                        "peak_rss_bytes_max": max(res["peak_rss_bytes"] for res in runs[k]),
                        "baseline_rss_bytes": runs[k][0]["baseline_rss_bytes"], "saved_bytes": runs[k][0]["saved_bytes"],
                        "saved_bytes_by_part": runs[k][0]["saved_bytes_by_part"]})
    base = results[0]
    for r in results[1:]:
        r["speedup_vs_k%d" % ks[0]] = base["step_time_s_median"] / r["step_time_s_median"]
        r["peak_rss_ratio_vs_k%d" % ks[0]] = r["peak_rss_bytes"] / base["peak_rss_bytes"]
        r["saved_bytes_ratio_vs_k%d" % ks[0]] = r["saved_bytes"] / base["saved_bytes"]
        # The search step's own memory: peak RSS above what the process held before building the model.
        r["step_rss_ratio_vs_k%d" % ks[0]] = ((r["peak_rss_bytes"] - r["baseline_rss_bytes"])
                                              / (base["peak_rss_bytes"] - base["baseline_rss_bytes"]))
    return {"results": results}


def largest_batch(spec: dict[str, Any], k: int, cap_bytes: int, start: int, limit: int, resolution: int) -> dict[str, Any]:
    """The largest batch (to `resolution`) whose one-step child stays under the cap: doubling, then bisection."""
    probes: list[dict[str, Any]] = []

    def fits(batch: int) -> bool:
        res = spawn({**spec, "partial_channels": k, "batch_size": batch, "steps": 1, "warmup": 0}, cap_bytes)
        probes.append({"batch_size": batch, "fits": res is not None,
                       "peak_rss_bytes": None if res is None else res["peak_rss_bytes"]})
        print(f"cap search  K={k}  batch {batch:5d}  {'fits' if res else 'over the cap'}", file=sys.stderr)
        return res is not None

    lo, hi = 0, None
    batch = start
    while batch <= limit:
        if not fits(batch):
            hi = batch
            break
        lo, batch = batch, batch * 2
    if hi is None:
        return {"partial_channels": k, "largest_batch": lo, "reached_limit": True, "probes": probes}
    while hi - lo > resolution:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return {"partial_channels": k, "largest_batch": lo, "first_batch_over_cap": hi, "reached_limit": False,
            "probes": probes}


def machine_load() -> dict[str, Any]:
    """The load other processes put on this (shared) machine while measuring."""
    one, five, fifteen = os.getloadavg()
    return {"loadavg_1_5_15": [one, five, fifteen], "cpus": os.cpu_count()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--partial-channels", type=int, nargs="+", default=[1, 4],
                   help="the Ks to compare; the first is the baseline (1 = plain DARTS)")
    p.add_argument("--order", default="first", choices=["first", "second"])
    p.add_argument("--recompute-op-bodies", choices=list(RECOMPUTE), default="auto",
                   help="model.recompute_op_bodies for PC-DARTS (K > 1): auto (the model's default: on for K > 1 on "
                        "the CPU), on or off; plain DARTS always runs with its default (off)")
    p.add_argument("--impl", default="auto", choices=["reference", "fused", "auto"])
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="child processes per K for the timing (0: no timing)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per child")
    # A fresh process's first steps also pay the page faults of a heap still growing; a search runs thousands.
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per child before the timed ones")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mem-cap-mib", type=int, default=None, help="also find the largest batch under this peak RSS")
    p.add_argument("--cap-start-batch", type=int, default=8)
    p.add_argument("--cap-max-batch", type=int, default=1024)
    p.add_argument("--cap-resolution", type=int, default=4, help="stop bisecting when the bracket is this narrow")
    p.add_argument("--json", default=None, help="also write the report here")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return {}
    import platform

    import torch

    spec = {"order": args.order, "impl": args.impl, "channels": args.channels, "layers": args.layers,
            "batch_size": args.batch_size, "image_size": args.image_size, "steps": args.steps,
            "warmup": args.warmup, "threads": args.threads, "seed": args.seed,
            "recompute_op_bodies": args.recompute_op_bodies}
    report: dict[str, Any] = {
        "benchmark": "pcdarts_vs_darts_search_step",
        "environment": {"device": "cpu", "device_name": platform.processor() or platform.machine(),
                        "torch": torch.__version__, "threads": args.threads, "python": platform.python_version(),
                        "load_before": machine_load()},
        "config": {**spec, "partial_channels": args.partial_channels, "rounds": args.rounds,
                   "peak_rss": "each child's ru_maxrss (whole process: torch, extension, model, step)"},
    }
    if args.rounds > 0:
        report.update(compare(spec, args.partial_channels, args.rounds))
        base_k = args.partial_channels[0]
        for r in report["results"][1:]:
            print(f"K={r['partial_channels']} vs K={base_k}: {r[f'speedup_vs_k{base_k}']:.2f}x faster, "
                  f"{r[f'peak_rss_ratio_vs_k{base_k}']:.2f}x peak RSS, "
                  f"{r[f'step_rss_ratio_vs_k{base_k}']:.2f}x peak RSS above the import baseline, "
                  f"{r[f'saved_bytes_ratio_vs_k{base_k}']:.2f}x saved activations", file=sys.stderr)
    if args.mem_cap_mib:
        cap = args.mem_cap_mib * 2**20
        report["memory_cap"] = {"cap_mib": args.mem_cap_mib, "resolution": args.cap_resolution, "results": [
            largest_batch(spec, k, cap, args.cap_start_batch, args.cap_max_batch, args.cap_resolution)
            for k in args.partial_channels]}
        for r in report["memory_cap"]["results"]:
            print(f"K={r['partial_channels']}: largest batch under {args.mem_cap_mib} MiB peak RSS: "
                  f"{r['largest_batch']}{' (the limit)' if r['reached_limit'] else ''}", file=sys.stderr)
    report["environment"]["load_after"] = machine_load()
    text = json.dumps(report, indent=2)
    if args.json:
        from nasdeploy.utils.files import write_text_atomic

        write_text_atomic(args.json, text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
