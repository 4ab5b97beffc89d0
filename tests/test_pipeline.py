"""The end-to-end pipeline on a tiny config: artifacts, resume after interruption, --force, errors."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from nasdeploy.errors import ConfigError
from nasdeploy.genotypes import load_genotype
from nasdeploy.pipeline.config import load_pipeline_config, pipeline_config_from_dict
from nasdeploy.pipeline.runner import STAGE_ORDER, run_pipeline

TINY = {
    "name": "tiny",
    "search": {
        "data": {"dataset": "demo", "demo_train_size": 64, "demo_seed": 0, "num_workers": 0},
        "model": {"channels": 4, "layers": 3, "steps": 2, "multiplier": 2},
        "search": {"epochs": 1, "batch_size": 16, "eval_images": 16, "seed": 0, "threads": 1},
    },
    "train": {
        "data": {"dataset": "demo", "demo_train_size": 64, "demo_test_size": 32, "demo_seed": 0, "num_workers": 0},
        "model": {"net": "cifar", "channels": 4, "layers": 3, "auxiliary": True},
        "train": {"epochs": 2, "batch_size": 16, "seed": 0, "threads": 1},
    },
    "export": {"formats": ["onnx"]},
    "profile": {"net": "cifar", "channels": 8, "layers": 5, "compare": ["DARTS_V2"], "backends": [], "latency_for": []},
}


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
    assert second.skipped == ["search", "derive"] and second.ran == ["train", "export", "profile", "report"]
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
    # The top-level model.onnx is the exported, parity-checked model and runs.
    session = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: torch.randn(3, 3, 32, 32).numpy()})[0]
    assert out.shape == (3, 10)


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
    from nasdeploy.search.config import search_config_from_dict
    from nasdeploy.train.config import train_config_from_dict

    cfg = load_pipeline_config(None, ["train.train.epochs=3"])
    assert cfg.name == "demo" and cfg.train["train"]["epochs"] == 3
    search_config_from_dict(cfg.search)
    train_config_from_dict(cfg.train)


@pytest.mark.parametrize("name", ["pipeline_cifar10.yaml", "pipeline_imagenet_mobile.yaml"])
def test_shipped_pipeline_configs_validate(name):
    from nasdeploy.search.config import search_config_from_dict
    from nasdeploy.train.config import train_config_from_dict

    cfg = load_pipeline_config(Path(__file__).parent.parent / "configs" / name)
    search = search_config_from_dict(cfg.search)
    train = train_config_from_dict(cfg.train)
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
    assert budget["meets"] == (found["macs"] <= 60e6)
    # The derived cell's table cost equals what the profiler measures for the found network.
    assert budget["derived_at_end"] == found["macs"]
    assert "Search budget: macs <= 60.0M" in (run_dir / "report.md").read_text()


def test_export_stage_checks_runtimes_on_real_images_and_reports_int8(tmp_path):
    pytest.importorskip("executorch")
    data = json.loads(json.dumps(TINY))
    data["export"] = {"formats": ["onnx", "executorch"], "int8": ["ort"], "calibration_images": 16,
                      "validation_images": 32}
    data["profile"]["compare"] = []
    result = run_pipeline(pipeline_config_from_dict(data, Path("."), "deploy.yaml"), tmp_path, progress=False)
    assert result.interrupted is None
    export = json.loads((tmp_path / "summary.json").read_text())["export"]
    runtimes = export["runtimes"]
    assert {"executorch", "onnx_validation"} <= set(runtimes)
    assert runtimes["onnx_validation"]["top1_agreement"] is not None and runtimes["onnx_validation"]["passed"]
    q = export["quantization"]["ort"]
    assert q["status"] == "ok" and q["int8_size_bytes"] > 0 and q["float_size_bytes"] > 0  # (QDQ overhead: a 6k-param net grows)
    assert q["delta"] == pytest.approx(q["int8_metric"] - q["float_metric"])
    report = (tmp_path / "report.md").read_text()
    assert "top-1 agreement" in report and "| INT8 (" in report and "pts |" in report
    assert (tmp_path / "export" / "model.pte").is_file() and (tmp_path / "export" / "model_int8.onnx").is_file()
