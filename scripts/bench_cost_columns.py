#!/usr/bin/env python
"""Seconds each optional cost-table column / INT8 row adds to the pipeline's profile stage.

Builds each genotype as the profile stage does (ImageNet mobile setting, auxiliary head counted apart),
exports its ONNX once (the ort-cpu-1t column already pays for that) and then times one latency backend at
a time with the stage's protocol, so each number is what that backend adds: lowering / quantizing plus
the warm-up and timed runs.

  python scripts/bench_cost_columns.py --found runs/demo/genotype.json --json cost_columns.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nasdeploy.export.onnx import export_onnx  # noqa: E402
from nasdeploy.genotypes import resolve_genotype  # noqa: E402
from nasdeploy.nets import build_network  # noqa: E402
from nasdeploy.profile.latency import measure_latency  # noqa: E402
from nasdeploy.profile.protocol import LatencyConfig  # noqa: E402


def main() -> None:
    """Time the backends of the found genotype and of the compared ones, one backend at a time."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--found", required=True, help="the found genotype (file or registry name)")
    ap.add_argument("--found-backends", default="ort-cpu-1t,ort-int8-cpu-1t,executorch-fp32,executorch-int8")
    ap.add_argument("--compare", default="DARTS_V2", help="comma-separated genotypes that get the float columns")
    ap.add_argument("--compare-backends", default="executorch-fp32")
    ap.add_argument("--net", default="imagenet")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    cfg = LatencyConfig(warmup=args.warmup, runs=args.runs)
    plan = [(args.found, args.found_backends.split(","))]
    plan += [(name, args.compare_backends.split(",")) for name in args.compare.split(",") if name]
    rows = []
    for target, backends in plan:
        genotype = resolve_genotype(target, expected_kind="cnn_cell")
        model = build_network(genotype, args.net, auxiliary=True).eval()
        shape = tuple(model.default_cfg.input_size)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            onnx_path = export_onnx(model, Path(tmp) / "model.onnx", input_size=shape, dynamic_spatial=False)
            rows.append({"target": target, "backend": "(ONNX export, paid by the ort-cpu-1t column)",
                         "seconds": round(time.perf_counter() - t0, 1)})
            for backend in backends:
                t0 = time.perf_counter()
                res = measure_latency([backend], shape, cfg, model=model, onnx_path=onnx_path)[backend]
                rows.append({"target": target, "backend": backend, "seconds": round(time.perf_counter() - t0, 1),
                             "status": res.status, "median_ms": res.median_ms, "p90_ms": res.p90_ms,
                             "model_bytes": res.settings.get("model_bytes"),
                             "threads": res.settings.get("intra_op_threads"), "note": res.note})
                print(json.dumps(rows[-1]), flush=True)
    out = {"net": args.net, "warmup": args.warmup, "runs": args.runs, "machine": platform.processor() or platform.machine(),
           "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
