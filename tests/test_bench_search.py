"""scripts/bench_search.py runs and reports the fields the fused-kernel issue compares against."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_search.py"


def test_bench_search_reports_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_search", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    report = bench.main(["--order", "first", "second", "--steps", "1", "--warmup", "1", "--batch-size", "4",
                         "--channels", "4", "--layers", "3", "--image-size", "16", "--device", "cpu",
                         "--threads", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(capsys.readouterr().out)
    assert [r["order"] for r in report["results"]] == ["first", "second"]
    for r in report["results"]:
        assert r["impl"] == "reference" and r["step_time_s_median"] > 0
        assert r["images_per_s"] == 4 / r["step_time_s_median"]
        assert r["peak_memory_bytes"] > 10 * 2**20 and r["memory_kind"].startswith("cpu_peak_rss")
