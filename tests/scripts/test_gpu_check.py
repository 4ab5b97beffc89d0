"""scripts/gpu_check.sh: its step limits fit one 9-minute GPU call, and --dry-run runs every step on the CPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nasdeploy.kernels.build import compiler_available

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
ONE_CALL_S = 540  # one 9-minute call on the GPU machine
STEP = re.compile(r'^\s*step\s+"([^"]+)"\s+(\S+)\s', re.MULTILINE)
OUTPUTS = ["build.json", "bandwidth.json", "mixed_op_normal.json", "mixed_op_reduction.json", "mixed_op_pcdarts.json",
           "search_darts.json", "search_pcdarts.json", "summary.json"]


def step_limits() -> dict[str, int]:
    """name -> time limit of every `step NAME SECONDS ...` line (a non-numeric limit fails the int())."""
    text = SCRIPT.read_text(encoding="utf-8")
    return {name: int(limit) for name, limit in STEP.findall(text)}


def test_step_limits_fit_one_nine_minute_call():
    text = SCRIPT.read_text(encoding="utf-8")
    limits = step_limits()
    calls = [line for line in text.splitlines() if re.match(r"\s*step\s", line)]
    assert len(calls) == len(limits) >= 9  # every step call was parsed (none hides a limit), names unique
    assert sum(limits.values()) <= ONE_CALL_S, limits
    deadline = int(re.search(r"^DEADLINE=(\d+)$", text, re.MULTILINE).group(1))
    assert deadline <= ONE_CALL_S  # no step starts later, and each is cut to what is left
    assert "timeout" in text and '"$limit"' in text


@pytest.mark.skipif(not compiler_available(), reason="no C++ compiler: the fused kernels cannot be built here")
def test_dry_run_runs_every_step_and_writes_json(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=1800)  # a hang guard; a quiet 2-core machine takes about 40 s
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    data = {name: json.loads((tmp_path / name).read_text()) for name in OUTPUTS}
    assert "cpu" in data["build.json"]["devices"] and data["build.json"]["cuda"] is False
    summary = data["summary.json"]
    assert summary["gpu"].startswith("dry run") and summary["date"]
    ran = {s["step"]: s["status"] for s in summary["steps"]}
    assert set(ran) == set(step_limits()) - {"summary", "polygraphy trt vs onnxrt"}
    assert set(ran.values()) == {"ok"}, ran
    assert data["search_pcdarts.json"]["config"]["partial_channels"] == 4
    assert data["mixed_op_pcdarts.json"]["config"]["partial_channels"] == 4
    for name in ("search_darts.json", "search_pcdarts.json"):
        assert [c["order"] for c in data[name]["comparisons"]] == ["first", "second"]  # fused vs reference
    whats = [row["what"] for row in summary["rows"]]
    assert any(w.startswith("PC-DARTS K=4 vs DARTS") for w in whats)
    assert "mixed op, PC-DARTS K=4 cell" in whats
