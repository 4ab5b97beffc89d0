"""The end-to-end pipeline on a tiny config: artifacts, resume after interruption, --force, errors."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from helpers import TINY_PIPELINE as TINY
from helpers import assert_commands_parse
from nasdeploy.errors import ConfigError
from nasdeploy.genotypes import load_genotype
from nasdeploy.pipeline.config import load_pipeline_config, pipeline_config_from_dict
from nasdeploy.pipeline.deployment import NO_EXECUTORCH, NO_INT8
from nasdeploy.pipeline.state import PipelineState
from nasdeploy.pipeline.results import SkippedStage
from nasdeploy.pipeline.runner import STAGE_ORDER, run_pipeline


def tiny_config():
    return pipeline_config_from_dict(json.loads(json.dumps(TINY)), Path("."), "tiny.yaml")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pipeline") / "run"
    first = run_pipeline(tiny_config(), run_dir, progress=False, stop_after_epoch=1)
    return run_dir, first, run_pipeline(tiny_config(), run_dir, progress=False)


def test_interrupted_training_resumes_from_its_checkpoint(finished_run):
    run_dir, first, second = finished_run
    assert first.interrupted == "train" and first.ran == ["search", "derive"]
    assert second.skipped == ["search", "derive"]
    assert second.ran == ["train", "export", "executorch", "quantize", "profile", "report"]
    log = [json.loads(line) for line in (run_dir / "train" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]  # epoch 1 was not trained again


def test_run_directory_holds_the_deliverables(finished_run):
    run_dir, _, second = finished_run
    genotype = load_genotype(run_dir / "genotype.json", "cnn_cell")
    assert genotype.normal_steps == 2
    export_parity = json.loads((run_dir / "export" / "parity_onnx.json").read_text())
    assert export_parity["passed"] is True
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["export"]["parity"]["passed"] is True
    report = (run_dir / "report.md").read_text()
    for fig in summary["figures"].values():
        assert f"]({fig})" in report and (run_dir / fig).is_file()
    assert {"cells", "alphas", "curves"} <= set(summary["figures"])
    rows = {r["name"]: r for r in summary["profile"]["rows"]}
    assert rows["DARTS_V2"]["params"] > rows["tiny (found)"]["params"] > 0
    assert "nasdeploy train --genotype" in report and "nasdeploy export" in report
    # An export section without executorch / int8: those stages are done, each with one line saying why.
    state = json.loads((run_dir / "pipeline_state.json").read_text())["stages"]
    for stage, why in (("executorch", NO_EXECUTORCH), ("quantize", NO_INT8)):
        assert state[stage]["status"] == "done" and state[stage]["outputs"] == {"kind": "skipped", "reason": why}
        assert f"| {stage} | " in report and f"skipped: {why}" in report
        assert not (run_dir / stage).exists()
    # The top-level model.onnx is the exported, parity-checked model and runs.
    session = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: torch.randn(3, 3, 32, 32).numpy()})[0]
    assert out.shape == (3, 10)
    assert_commands_parse(summary["commands"])


def test_derive_publishes_the_genotype_the_search_wrote(finished_run, tmp_path):
    import shutil

    from nasdeploy.genotypes import get_genotype, save_genotype

    run_dir, _, _ = finished_run
    published = load_genotype(run_dir / "genotype.json", "cnn_cell")
    searched = load_genotype(run_dir / "search" / "genotype.json", "cnn_cell")
    assert published == searched and published.name == "tiny_found"  # equal cells; the run names it
    # derive copies search/genotype.json (it does not derive again from the alphas): another file there is published
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    save_genotype(get_genotype("DARTS_V2"), copy / "search" / "genotype.json")
    assert run_pipeline(tiny_config(), copy, progress=False, only=["derive"]).ran == ["derive"]
    assert load_genotype(copy / "genotype.json", "cnn_cell") == get_genotype("DARTS_V2")


def test_finished_run_is_not_redone_and_force_redoes_later_stages(finished_run):
    run_dir, _, _ = finished_run
    again = run_pipeline(tiny_config(), run_dir, progress=False)
    assert again.ran == [] and again.skipped == list(STAGE_ORDER)
    forced = run_pipeline(tiny_config(), run_dir, progress=False, force=["profile"])
    assert forced.ran == ["profile", "report"]


def test_bad_input_errors(tmp_path, finished_run):
    run_dir, _, _ = finished_run
    with pytest.raises(ConfigError, match="unknown pipeline stage 'deploy'"):
        run_pipeline(tiny_config(), run_dir, force=["deploy"], progress=False)
    other = json.loads(json.dumps(TINY))
    other["train"]["train"]["epochs"] = 5
    with pytest.raises(ConfigError, match="different pipeline config"):
        run_pipeline(pipeline_config_from_dict(other, Path("."), "x.yaml"), run_dir, progress=False)
    with pytest.raises(ConfigError, match="unknown section 'serach'"):
        pipeline_config_from_dict({**TINY, "serach": {}}, Path("."), "x.yaml")
    with pytest.raises(ConfigError, match="unknown key 'profile.backend'"):
        pipeline_config_from_dict({**TINY, "profile": {"backend": []}}, Path("."), "x.yaml")


def test_builtin_demo_config_loads_and_validates():
    from nasdeploy.config.darts_cnn import DartsCnnSearchConfig, DartsCnnTrainConfig
    from nasdeploy.utils.yamlconfig import from_dict

    cfg = load_pipeline_config(None, ["train.train.epochs=3", "search.search.threads=1"])
    assert cfg.name == "demo" and cfg.train.train.epochs == 3 and cfg.search.search.threads == 1
    assert isinstance(cfg.search, DartsCnnSearchConfig) and isinstance(cfg.train, DartsCnnTrainConfig)
    # The record stored as pipeline.yaml is the typed configs' plain form (defaults included).
    assert from_dict(DartsCnnTrainConfig, cfg.record()["train"]) == cfg.train


@pytest.mark.parametrize("name", ["darts_cnn_cifar10_pipeline.yaml", "darts_cnn_imagenet_mobile_pipeline.yaml"])
def test_shipped_pipeline_configs_validate(name):
    from nasdeploy.config.darts_cnn import DartsCnnSearchConfig, DartsCnnTrainConfig

    cfg = load_pipeline_config(Path(__file__).resolve().parents[2] / "configs" / name)
    search, train = cfg.search, cfg.train
    assert isinstance(search, DartsCnnSearchConfig) and isinstance(train, DartsCnnTrainConfig)
    assert search.search.epochs == 50 and search.model.channels == 16 and search.model.layers == 8
    assert train.model.net == ("imagenet" if "imagenet" in name else "cifar")


def test_a_pipeline_with_a_budget_builds_its_table_and_reports_the_verdict(tmp_path, monkeypatch):
    monkeypatch.setenv("NASDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    data = json.loads(json.dumps(TINY))
    data["search"]["model"].update(steps=4, multiplier=4)
    data["search"]["search"]["cost"] = {"metric": "macs", "table": "auto", "target": 60_000_000, "weight": 2.0,
                                        "value": "derived"}
    data["profile"]["compare"] = []
    result = run_pipeline(pipeline_config_from_dict(data, Path("."), "budget.yaml"), tmp_path / "run", progress=False)
    run_dir = tmp_path / "run"
    assert result.interrupted is None and (run_dir / "search" / "cost_table.json").is_file()
    assert list((tmp_path / "cache").rglob("*.json"))  # cached for the next run on this machine
    stored = (run_dir / "search" / "config.yaml").read_text()
    assert str(run_dir / "search" / "cost_table.json") in stored
    log = [json.loads(line) for line in (run_dir / "search" / "log.jsonl").read_text().splitlines()]
    assert "expected_macs" in log[-1] and "derived_macs" in log[-1]
    profile = json.loads((run_dir / "profile.json").read_text())
    budget, found = profile["budget"], profile["rows"][0]
    assert budget["measured"] == found["macs"] and budget["target"] == 60e6
    # The derived cell's table cost equals what the profiler measures for the found network, and the budget is
    # met by construction (derive: budget, the default), whatever the hinge did during the search.
    assert budget["derived"] == found["macs"] and budget["meets"] and found["macs"] <= 60e6
    assert isinstance(budget["expected"], float) and budget["unconstrained"] >= budget["derived"]
    assert budget["binding"] == (budget["unconstrained"] > 60e6) and budget["method"].startswith("exact")
    report = (run_dir / "report.md").read_text()
    assert "Search budget: macs <= 60.0M" in report and "**meets the budget**" in report


DEPLOY_EXPORT = {"formats": ["onnx", "executorch"], "int8": ["ort"], "calibration_images": 16, "validation_images": 32}


def deploy_config():
    data = json.loads(json.dumps(TINY))
    data["export"] = dict(DEPLOY_EXPORT)
    data["profile"].update(compare=[], int8=["ort"], warmup=0, runs=2)
    return pipeline_config_from_dict(data, Path("."), "deploy.yaml")


def _run_counting_builds(run_dir: Path, **kwargs) -> tuple[object, dict[str, int]]:
    """run_pipeline, counting how often the trained network is rebuilt and the run's images sampled."""
    from nasdeploy.export import samples, source

    counts = {"build_export_model": 0, "prepare_export_data": 0}

    def counted(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kw):
            counts[name] += 1
            return real(*args, **kw)
        return wrapper

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(source, "build_export_model", counted(source, "build_export_model"))
        mp.setattr(samples, "prepare_export_data", counted(samples, "prepare_export_data"))
        return run_pipeline(deploy_config(), run_dir, progress=False, **kwargs), counts


@pytest.fixture(scope="module")
def deploy_run(tmp_path_factory):
    """A finished tiny run with ONNX, an ExecuTorch program and onnxruntime INT8 (left unchanged: tests copy it)."""
    pytest.importorskip("executorch")
    run_dir = tmp_path_factory.mktemp("deploy") / "run"
    result, counts = _run_counting_builds(run_dir)
    return run_dir, result, counts


def _copy_run(run_dir: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def _json(value: object) -> object:
    return json.loads(json.dumps(value))


def _state(run_dir: Path) -> dict:
    return json.loads((run_dir / "pipeline_state.json").read_text())["stages"]


def test_deploy_stages_write_their_own_folders_and_the_report_shows_float_vs_int8(deploy_run):
    run_dir, result, counts = deploy_run
    # export, executorch and quantize share one build of the trained network and one sample of the run's images
    assert counts == {"build_export_model": 1, "prepare_export_data": 1}
    assert result.interrupted is None and result.ran == list(STAGE_ORDER)
    summary = json.loads((run_dir / "summary.json").read_text())
    export = summary["export"]
    runtimes = export["runtimes"]
    assert {"executorch", "executorch_validation", "onnx_validation"} <= set(runtimes)
    assert runtimes["onnx_validation"]["top1_agreement"] is not None and runtimes["onnx_validation"]["passed"]
    q = export["quantization"]["ort"]
    assert q["status"] == "ok" and q["int8_size_bytes"] > 0 and q["float_size_bytes"] > 0  # (QDQ overhead: a 6k-param net grows)
    assert q["delta"] == pytest.approx(q["int8_metric"] - q["float_metric"])
    # The float size is that of the export stage's ONNX model, which the quantize stage read.
    assert q["float_size_bytes"] == (run_dir / "export" / "model.onnx").stat().st_size
    report = (run_dir / "report.md").read_text()
    assert "top-1 agreement" in report and "| INT8 (" in report and "pts |" in report
    # The INT8 verdict: the accuracy guard (max_drop 1 point by default) and the speed guard, in the report and
    # in the typed result the state file hands on.
    assert q["guard"]["max_drop"] == 1.0 and q["speed"]["outcome"] in ("faster", "no faster", "slower")
    assert q["verdict"].startswith("INT8 ort: accuracy: ") and "; speed: INT8 " in q["verdict"]
    assert f"- {q['verdict']}" in report
    stored = PipelineState.load(run_dir).result("quantize").quantization["ort"]
    assert stored.verdict == q["verdict"] and _json(stored.guard.to_dict()) == q["guard"] and _json(stored.speed.to_dict()) == q["speed"]
    assert "ONNX in `export/`, ExecuTorch in `executorch/`, INT8 in `quantize/`" in report
    assert sorted(p.name for p in (run_dir / "executorch").iterdir()) == [
        ".nasdeploy", "export.json", "model.pte", "model.pte.json", "parity_executorch.json", "parity_executorch_validation.json"]
    assert sorted(p.name for p in (run_dir / "quantize").iterdir()) == [".nasdeploy", "model_int8.onnx", "quantization.json"]
    assert not list((run_dir / "export").glob("*.pte")) and not (run_dir / "export" / "model_int8.onnx").exists()
    # Each stage has its own time and its own reproducing command, listed in stage order.
    assert list(summary["stages"]) == list(STAGE_ORDER[:-1])
    assert all(f"| {stage} | " in report for stage in ("export", "executorch", "quantize"))
    commands = summary["commands"]
    assert list(commands)[:len(STAGE_ORDER) - 1] == list(STAGE_ORDER[:-1])
    assert "--format executorch --out" in commands["executorch"] and "--format executorch" not in commands["export"]
    assert commands["quantize"].endswith("--only quantize")
    assert_commands_parse(commands)


def test_profile_times_the_int8_files_the_run_wrote(deploy_run, tmp_path, monkeypatch):
    import nasdeploy.export.ort_int8 as ort_int8

    run_dir = _copy_run(deploy_run[0], tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("the profile stage quantized again instead of timing quantize/model_int8.onnx")

    monkeypatch.setattr(ort_int8, "ort_static_int8", refuse)
    assert run_pipeline(deploy_config(), run_dir, progress=False, only=["profile"]).ran == ["profile"]
    timings = json.loads((run_dir / "profile.json").read_text())["int8_files"]
    (row,) = timings["rows"]
    assert (row["float_file"], row["int8_file"]) == ("export/model.onnx", "quantize/model_int8.onnx")
    assert (row["float_backend"], row["int8_backend"]) == ("ort-cpu-1t", "ort-int8-cpu-1t")
    for side, name in (("float", row["float_file"]), ("int8", row["int8_file"])):
        assert row[side]["model_bytes"] == (run_dir / name).stat().st_size and row[side]["median_ms"] > 0
        # Every timing says whether other processes competed, and the load signals that say so.
        assert isinstance(row[side]["contended"], bool) and "during the" in row[side]["load"]
    # The trained network at its input size: the cost table's rows stay at the profile section's setting.
    assert timings["input_shape"] == [3, 32, 32] and "cifar network" in timings["network"]
    report = (deploy_run[0] / "report.md").read_text()
    assert "INT8 latency: the trained cifar network as exported (input 3x32x32, batch 1)" in report
    assert "| ort | `export/model.onnx` (ort-cpu-1t) | `quantize/model_int8.onnx` (ort-int8-cpu-1t) |" in report


def test_only_quantize_redoes_just_int8(deploy_run, tmp_path):
    run_dir = _copy_run(deploy_run[0], tmp_path)
    kept = {p: p.stat().st_mtime_ns for p in (run_dir / "export" / "model.onnx", run_dir / "executorch" / "model.pte")}
    before = json.loads((run_dir / "quantize" / "quantization.json").read_text())
    result, counts = _run_counting_builds(run_dir, only=["quantize"])
    assert result.ran == ["quantize"] and result.skipped == []
    assert counts == {"build_export_model": 1, "prepare_export_data": 1}
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    after = json.loads((run_dir / "quantize" / "quantization.json").read_text())
    # Seeded calibration and validation samples: the same INT8 model, the same scores.
    assert after["ort"]["int8_metric"] == before["ort"]["int8_metric"] and after["ort"]["status"] == "ok"


def test_force_executorch_redoes_it_and_the_later_stages_only(deploy_run, tmp_path):
    run_dir = _copy_run(deploy_run[0], tmp_path)
    onnx = (run_dir / "export" / "model.onnx").stat().st_mtime_ns
    pte = (run_dir / "executorch" / "model.pte").stat().st_mtime_ns
    result = run_pipeline(deploy_config(), run_dir, progress=False, force=["executorch"])
    assert result.ran == ["executorch", "quantize", "profile", "report"]
    assert result.skipped == ["search", "derive", "train", "export"]
    assert (run_dir / "export" / "model.onnx").stat().st_mtime_ns == onnx
    assert (run_dir / "executorch" / "model.pte").stat().st_mtime_ns != pte


def test_a_failed_quantize_leaves_export_and_executorch_done(deploy_run, tmp_path, monkeypatch):
    from nasdeploy.export import api

    run_dir = _copy_run(deploy_run[0], tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("killed in the middle of INT8")

    monkeypatch.setattr(api, "write_int8", broken)
    with pytest.raises(RuntimeError, match="killed in the middle"):
        run_pipeline(deploy_config(), run_dir, progress=False, force=["quantize"])
    state = _state(run_dir)
    assert state["export"]["status"] == state["executorch"]["status"] == "done"
    assert state["quantize"]["status"] == "running"
    assert not (run_dir / "quantize").exists() and not list(run_dir.glob(".quantize*"))  # nothing half-written
    assert (run_dir / "executorch" / "model.pte").is_file() and (run_dir / "export" / "model.onnx").is_file()
    monkeypatch.undo()
    again = run_pipeline(deploy_config(), run_dir, progress=False)
    assert again.ran == ["quantize", "profile", "report"] and (run_dir / "quantize" / "model_int8.onnx").is_file()


def test_export_section_names_are_checked_when_the_file_loads():
    data = json.loads(json.dumps(TINY))
    data["export"] = {"formats": ["onnx", "tflite"], "int8": ["fp8"]}
    with pytest.raises(ConfigError, match=r"unknown export format / int8 method\(s\) \['tflite', 'fp8'\]"):
        pipeline_config_from_dict(data, Path("."), "x.yaml")


@pytest.mark.parametrize("space, int8, expected", [
    ("darts_rnn", (), {"executorch": "no ExecuTorch export path", "quantize": "no INT8 path"}),
    ("autodeeplab", ("ort",), {"executorch": NO_EXECUTORCH, "quantize": "classifiers only (segmentation: not yet)"}),
    ("autodeeplab", (), {"quantize": NO_INT8}),
])
def test_spaces_without_a_deployment_path_declare_the_stage_skipped(space, int8, expected, tmp_path):
    from dataclasses import replace

    from nasdeploy.pipeline.sections import ExportSection
    from nasdeploy.pipeline.stages import StageContext
    from nasdeploy.spaces.table import get_space

    config = replace(tiny_config(), space=space)
    if space == "autodeeplab":
        config = replace(config, export=ExportSection(formats=("onnx",), int8=int8))
    stages = get_space(space).pipeline_stages().stages()
    ctx = StageContext(config, tmp_path, progress=False)
    for stage, why in expected.items():
        result = stages[stage](ctx)  # no trained model in tmp_path: a skipping stage must not need one
        assert isinstance(result, SkippedStage) and why in result.reason and "\n" not in result.reason
    assert list(tmp_path.iterdir()) == []


def test_without_the_executorch_extra_its_stages_skip_with_the_install_hint(monkeypatch, tmp_path):
    from dataclasses import replace

    from nasdeploy.cli import pipeline_cmd
    from nasdeploy.pipeline import deployment
    from nasdeploy.pipeline.sections import ExportSection
    from nasdeploy.pipeline.stages import StageContext
    from nasdeploy.spaces.table import get_space

    monkeypatch.setattr(deployment, "executorch_installed", lambda: False)
    config = replace(tiny_config(), export=ExportSection(formats=("onnx", "executorch"), int8=("executorch",)))
    ctx = StageContext(config, tmp_path, progress=False)
    stages = get_space("darts_cnn").pipeline_stages().stages()
    for stage in ("executorch", "quantize"):
        assert stages[stage](ctx) == SkippedStage(reason=deployment.MISSING_EXECUTORCH)
    assert "nasdeploy[executorch]" in deployment.MISSING_EXECUTORCH and list(tmp_path.iterdir()) == []
    assert pipeline_cmd._STAGES == ", ".join(STAGE_ORDER)  # the CLI help lists the runner's stages
