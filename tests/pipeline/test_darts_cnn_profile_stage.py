"""The DARTS CNN profile stage: its section's validation, the ExecuTorch column, backends that cannot run, the
INT8 comparison without the quantize stage's files, and its reproducing command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from helpers import TINY_PIPELINE as TINY
from helpers import assert_commands_parse
from nasdeploy.errors import ConfigError
from nasdeploy.genotypes import resolve_genotype, save_genotype
from nasdeploy.pipeline.config import pipeline_config_from_dict
from nasdeploy.pipeline.darts_cnn_stages import DartsCnnStages
from nasdeploy.pipeline.report_tables import contention_lines, cost_table
from nasdeploy.pipeline.results import ExportStageResult, ProfileStageResult
from nasdeploy.pipeline.stages import StageContext
from nasdeploy.pipeline.state import PipelineState


def _config(profile: dict) -> object:
    data = json.loads(json.dumps(TINY))
    data["profile"] = {"net": "cifar", "channels": 4, "layers": 1, "compare": ["DARTS_V2"], "latency_for": ["found"],
                       "warmup": 0, "runs": 2, **profile}
    return pipeline_config_from_dict(data, Path("."), "tiny.yaml")


@pytest.mark.parametrize("profile, message", [
    ({"int8": ["onnx"]}, r"unknown profile.int8 method 'onnx' \(choose from ort, executorch\)"),
    ({"int8": "ort"}, r"profile.int8 must be a list of names, got 'ort'"),
    ({"backends": ["ort-cpu-1t", "executorch"]}, None),  # a group name is fine
    ({"backends": ["ort-gpu"]}, r"profile.backends: unknown latency backend 'ort-gpu'"),
])
def test_profile_section_validation(profile, message):
    if message is None:
        assert _config(profile).profile.backends == ("ort-cpu-1t", "executorch-fp32", "executorch-int8")
        return
    with pytest.raises(ConfigError, match=message):
        _config(profile)


def _run_stage(tmp_path: Path, profile: dict) -> tuple[dict, str, ProfileStageResult]:
    save_genotype(resolve_genotype("DARTS_V1", expected_kind="cnn_cell"), tmp_path / "genotype.json")
    result = DartsCnnStages().profile(StageContext(_config(profile), tmp_path, progress=False))
    data = json.loads((tmp_path / "profile.json").read_text())
    return data, "\n".join(cost_table(data)), result


def _row_line(table: str, name: str) -> list[str]:
    line = next(l for l in table.splitlines() if l.startswith(f"| {name} |") or l.startswith(f"| **{name}** |"))
    return [c.strip() for c in line.strip("|").split("|")]


@pytest.mark.slow  # ~10 s: one ExecuTorch lowering of a one-cell net
def test_executorch_column(tmp_path):
    pytest.importorskip("executorch")
    data, table, result = _run_stage(tmp_path, {"backends": ["torch-cpu-1t", "ort-cpu-1t", "executorch-fp32"]})
    assert data["backends"] == ["torch-cpu-1t", "ort-cpu-1t", "executorch-fp32"]
    found, darts = data["rows"]
    assert found["name"] == "tiny (found)" and found["found"] and set(found["latency"]) == set(data["backends"])
    assert (result.found_params, result.found_macs) == (found["params"], found["macs"]) and result.table == "mobile"
    assert darts["latency"] == {} and darts["not_run"] == {}
    assert data["latency_protocol"]["runs"] == 2 and data["latency_protocol"]["threads"]["ort-cpu-1t"] == 1
    assert "executorch-fp32 median / p90 ms" in table.splitlines()[0]
    cell = found["latency"]["executorch-fp32"]
    assert _row_line(table, "tiny (found)")[-1] == (f"{cell['median_ms']:.2f} / {cell['p90_ms']:.2f}"
                                                    + (" (busy)" if cell["contended"] else ""))
    assert "2 timed runs per backend" in table


def test_missing_executorch_skips_the_column_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "executorch", None)  # import executorch -> ImportError
    data, table, _ = _run_stage(tmp_path, {"backends": ["ort-cpu-1t", "executorch-fp32"]})
    found, _ = data["rows"]
    assert set(found["latency"]) == {"ort-cpu-1t"} and found["not_run"]["executorch-fp32"]["status"] == "skipped"
    assert _row_line(table, "tiny (found)")[-1] == "skipped"
    lines = [l for l in table.splitlines() if "is not installed" in l]
    assert len(lines) == 1 and lines[0].startswith("executorch-fp32 skipped for tiny (found): optional dependency")
    assert "Traceback" not in table


def test_int8_without_the_quantize_stage_files_says_why(tmp_path):
    state = PipelineState(tmp_path)
    state.mark_done("export", ExportStageResult(files={"onnx": "export/model.onnx"}, parity={}, input_shape=(3, 32, 32)))
    data, _, _ = _run_stage(tmp_path, {"int8": ["ort"], "backends": []})
    (row,) = data["int8_files"]["rows"]
    assert row["method"] == "ort" and "the quantize stage made no INT8 file" in row["note"] and "float" not in row


def test_reproduce_command_of_the_cost_table(tmp_path):
    ctx = StageContext(_config({"backends": ["ort-cpu-1t"], "int8": ["ort", "executorch"]}), tmp_path)
    commands = DartsCnnStages().reproduce_commands(ctx)
    assert commands["profile"].endswith("DARTS_V2 --net cifar --channels 4 --layers 1 --latency ort-cpu-1t")
    assert "\n" not in commands["profile"]  # no INT8 files timed yet: no second line
    # Once profile.json holds the timed ONNX pair, a second line times those two files again.
    (tmp_path / "profile.json").write_text(json.dumps({"int8_files": {"input_shape": [3, 32, 32], "rows": [
        {"method": "ort", "float_file": "export/model.onnx", "int8_file": "quantize/model_int8.onnx"}]}}))
    table, int8 = DartsCnnStages().reproduce_commands(ctx)["profile"].splitlines()
    assert int8.endswith("quantize/model_int8.onnx --input-size 32x32 --latency ort-cpu-1t --warmup 0 --runs 2")
    assert_commands_parse(DartsCnnStages().reproduce_commands(ctx))


def test_compared_networks_are_timed_in_one_alternated_window_and_the_load_is_reported(tmp_path):
    data, table, _ = _run_stage(tmp_path, {"backends": ["torch-cpu-1t"], "latency_for": ["found", "DARTS_V2"]})
    found, darts = data["rows"]
    cells = [found["latency"]["torch-cpu-1t"], darts["latency"]["torch-cpu-1t"]]
    # One measurement window for both (A B A B): the same load record, so a change of load touches both alike.
    assert cells[0]["load"] == cells[1]["load"] and isinstance(cells[0]["contended"], bool)
    lines = contention_lines(data)
    assert len(lines) == 1 and ("quiet (" in lines[0] or "while other processes competed" in lines[0])


def test_a_contended_measurement_is_flagged_in_the_table_and_under_it():
    quiet = {"median_ms": 1.0, "p90_ms": 1.5, "contended": False, "load": "quiet during the 1.0 s measurement: x"}
    busy = {**quiet, "contended": True, "load": "CONTENDED: other processes competed during the 1.0 s measurement: y"}
    profile = {"backends": ["ort-cpu-1t"], "rows": [{"name": "found", "found": True, "params": 1, "macs": 1e6,
                                                     "latency": {"ort-cpu-1t": busy}},
                                                    {"name": "DARTS_V2", "params": 2, "macs": 2e6,
                                                     "latency": {"ort-cpu-1t": quiet}}]}
    table = "\n".join(cost_table(profile))
    assert "1.00 / 1.50 (busy)" in _row_line(table, "found")[-1] and "(busy)" not in _row_line(table, "DARTS_V2")[-1]
    (line,) = contention_lines(profile)
    assert line.startswith("**Latency measured while other processes competed**") and "(found ort-cpu-1t: CONTENDED" in line
    assert "DARTS_V2" not in line
    assert contention_lines({"rows": [{"name": "x", "latency": {"b": {"median_ms": 1.0}}}]}) == []  # no load recorded
