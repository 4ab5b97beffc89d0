"""scripts/bench_search.py runs and reports the fields the fused-kernel issue compares against."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_search.py"


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


def test_bench_search_compares_fused_with_reference_in_one_run(tmp_path, capsys):
    import pytest

    from nasdeploy.kernels.build import compiler_available

    if not compiler_available():
        pytest.skip("no C++ compiler: the fused kernels cannot be built here")
    spec = importlib.util.spec_from_file_location("bench_search", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--impl", "both", "--order", "first", "--steps", "1", "--warmup", "1", "--batch-size", "4",
                         "--channels", "4", "--layers", "3", "--image-size", "16", "--device", "cpu", "--threads", "1"])
    assert [r["impl"] for r in report["results"]] == ["reference", "fused"]
    (cmp,) = report["comparisons"]
    ref, fused = report["results"]
    assert cmp["speedup"] == ref["step_time_s_median"] / fused["step_time_s_median"]
    assert cmp["saved_bytes_ratio"] < 0.8  # folded BN outputs, pools and products are not stored
    assert cmp["max_alpha_difference"] < 1e-5  # same start, same batches: same alphas within float32


def test_bench_search_times_the_auto_deeplab_supernet(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_search", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--space", "autodeeplab", "--order", "first", "--steps", "1", "--warmup", "1",
                         "--batch-size", "2", "--channels", "2", "--layers", "2", "--blocks", "2",
                         "--image-size", "16", "--device", "cpu", "--threads", "1"])
    assert report["benchmark"] == "autodeeplab_search_step" and report["config"]["blocks"] == 2
    (result,) = report["results"]
    assert result["space"] == "autodeeplab" and result["impl"] == "reference" and result["step_time_s_median"] > 0
    assert result["saved_bytes"] > 0
