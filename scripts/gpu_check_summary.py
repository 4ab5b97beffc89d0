#!/usr/bin/env python
"""Summarise a scripts/gpu_check.sh output folder: a table on stdout (GPU, date, steps, ratios) and summary.json.

    python scripts/gpu_check_summary.py OUT_DIR

Standard library only (it runs with whatever python3 the GPU machine has). Missing or broken inputs
(a step that failed) leave their rows out; the step table says which step failed.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any


def _load(out: Path, name: str) -> dict[str, Any] | None:
    try:
        return json.loads((out / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _steps(out: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = (out / "steps.tsv").read_text(encoding="utf-8").splitlines()
    except OSError:
        return rows
    for line in lines:
        name, limit, seconds, rc = (line.split("\t") + ["", "", "", ""])[:4]
        rows.append({"step": name, "limit_s": int(limit or 0), "seconds": int(seconds or 0),
                     "status": "ok" if rc == "0" else ("skipped" if rc == "skipped" else f"failed ({rc})")})
    return rows


def _search_rows(label: str, data: dict[str, Any] | None) -> list[tuple[str, str]]:
    rows = []
    for c in (data or {}).get("comparisons", []):
        rows.append((f"{label}, {c['order']} order, fused vs reference",
                     f"{c['speedup']:.2f}x faster, {c['peak_memory_ratio']:.2f}x peak memory"))
    return rows


def _pcdarts_vs_darts(darts: dict[str, Any] | None, pc: dict[str, Any] | None) -> list[tuple[str, str]]:
    """PC-DARTS K=4 against DARTS, same implementation and order (the two runs share batch and supernet)."""
    rows = []
    if not darts or not pc:
        return rows
    base = {(r["order"], r["impl"]): r for r in darts.get("results", [])}
    for r in pc.get("results", []):
        b = base.get((r["order"], r["impl"]))
        if b:
            rows.append((f"PC-DARTS K=4 vs DARTS, {r['order']} order, {r['impl']}",
                         f"{b['step_time_s_median'] / r['step_time_s_median']:.2f}x faster, "
                         f"{r['peak_memory_bytes'] / b['peak_memory_bytes']:.2f}x peak memory"))
    return rows


def summarise(out: Path) -> dict[str, Any]:
    """The summary of one gpu_check output folder."""
    gpu = (out / "gpu.txt").read_text(encoding="utf-8").strip() if (out / "gpu.txt").exists() else "?"
    rows: list[tuple[str, str]] = []
    build = _load(out, "build.json")
    if build:
        rows.append(("kernels built", f"{build.get('name')} in {build.get('seconds', 0):.0f} s, "
                                      f"devices {', '.join(build.get('devices', []))}"))
    bw = _load(out, "bandwidth.json")
    if bw:
        r = bw["results"]
        rows.append(("reduction kernel bandwidth", f"{r['reduce_GBps']:.0f} GB/s = {100 * r['fraction_of_copy']:.0f}% of copy"))
    for name, label in (("mixed_op_normal.json", "mixed op, DARTS normal cell"),
                        ("mixed_op_reduction.json", "mixed op, DARTS reduction cell"),
                        ("mixed_op_pcdarts.json", "mixed op, PC-DARTS K=4 cell")):
        d = _load(out, name)
        if d and "fused" in d.get("results", {}):
            f = d["results"]["fused"]
            peak = f.get("peak_bytes_vs_reference")
            rows.append((label, f"fused {f['speedup_vs_reference']:.2f}x faster, "
                                f"{f['saved_bytes_vs_reference']:.2f}x saved bytes"
                                + (f", {peak:.2f}x peak memory" if peak is not None else "")))
    darts, pc = _load(out, "search_darts.json"), _load(out, "search_pcdarts.json")
    rows += _search_rows("search step, DARTS", darts) + _search_rows("search step, PC-DARTS K=4", pc)
    rows += _pcdarts_vs_darts(darts, pc)
    return {"gpu": gpu, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "steps": _steps(out), "rows": [{"what": w, "result": r} for w, r in rows]}


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else "benchmarks/gpu")
    summary = summarise(out)
    print(f"\n{summary['gpu']}   {summary['date']}")
    for s in summary["steps"]:
        print(f"  {s['step']:<62}{s['seconds']:>5} s / {s['limit_s']:>3} s  {s['status']}")
    for row in summary["rows"]:
        print(f"  {row['what']:<62} {row['result']}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
