"""Auto-DeepLab through the generic commands: `nasdeploy pipeline` (space: autodeeplab), search, train, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import assert_commands_parse
from nasdeploy.cli.main import main
from nasdeploy.errors import CheckpointError, ConfigError
from nasdeploy.genotypes import get_genotype, load_genotype
from nasdeploy.pipeline.config import load_pipeline_config, pipeline_config_from_dict
from nasdeploy.pipeline.runner import run_pipeline

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SEARCH = {
    "supernet": {"layers": 2, "filter_multiplier": 2, "blocks": 2, "stem_channels": 4, "mixed_op": "reference"},
    "data": {"dataset": "synthetic", "image_size": [32, 32], "num_train": 4, "num_val": 2, "crop_size": [32, 32]},
    "search": {"epochs": 2, "arch_start_epoch": 1, "batch_size": 2, "steps_per_epoch": 1, "threads": 1},
}
TRAIN = {
    "net": {"filter_multiplier": 2, "aspp_channels": 8, "decoder_channels": 8, "low_level_channels": 4},
    "data": {"dataset": "synthetic", "image_size": [32, 32], "num_train": 4, "num_val": 2, "crop_size": [32, 32]},
    "train": {"epochs": 2, "batch_size": 2, "steps_per_epoch": 1, "threads": 1},
}
TINY = {"name": "tiny_autodeeplab", "space": "autodeeplab", "search": SEARCH, "train": TRAIN,
        "profile": {"backends": ["torch-cpu-1t"], "latency_for": ["found"], "macs_at": [[48, 64]], "warmup": 1,
                    "runs": 2}}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One tiny pipeline, interrupted after the first search epoch and resumed to the end."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_dir = tmp_path_factory.mktemp("autodeeplab_pipeline") / "run"
        config = pipeline_config_from_dict(TINY, Path("."), "tiny.yaml")
        first = run_pipeline(config, run_dir, progress=False, stop_after_epoch=1)
        second = run_pipeline(config, run_dir, progress=False)
    finally:
        torch.set_num_threads(previous)
    return run_dir, first, second


def test_interrupted_search_resumes_where_it_stopped(finished_run):
    run_dir, first, second = finished_run
    assert first.interrupted == "search" and first.ran == []
    assert second.interrupted is None
    assert second.ran == ["search", "derive", "train", "export", "executorch", "quantize", "profile", "report"]
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "search" / "log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]  # epoch 1 was not searched again


def test_run_directory_holds_a_decoded_genotype_a_model_with_parity_and_costs(finished_run):
    run_dir, _, second = finished_run
    genotype = load_genotype(run_dir / "genotype.json", "autodeeplab")
    assert genotype.layers == 2 and genotype.blocks == 2 and genotype.name == "tiny_autodeeplab_found"
    # The decoded genotype is the one the search's final alpha/beta give (the search wrote its own decode).
    searched = load_genotype(run_dir / "search" / "genotype.json", "autodeeplab")
    assert (searched.cell, searched.path) == (genotype.cell, genotype.path)
    for name in ("model.onnx", "report.md", "summary.json", "profile.json", "figures/path.png", "figures/cells.svg",
                 "train/model.pt"):
        assert (run_dir / name).is_file(), name
    summary = second.summary
    assert summary["export"]["parity"]["passed"] is True
    parity = json.loads((run_dir / "export" / "parity_onnx.json").read_text())
    assert len({tuple(c["input_shape"][2:]) for c in parity["cases"]}) == 2  # two input sizes
    assert len({c["input_shape"][0] for c in parity["cases"]}) >= 2  # and several batch sizes
    assert 0.0 <= summary["train"]["miou"] <= 1.0 and "majority_miou" in summary["train"]
    profile = json.loads((run_dir / "profile.json").read_text())
    found, published = profile["rows"]
    assert found["found"] and published["name"] == "AutoDeepLab" and published["path"] == list(get_genotype("AutoDeepLab").path)
    assert profile["sizes"] == ["32x32", "48x64"]
    for row in (found, published):
        small, large = row["macs_at"]["32x32"], row["macs_at"]["48x64"]
        # Fully convolutional: MACs grow with the pixel count (3x here), up to border effects of strided convs.
        assert 2.5 < large / small < 3.7, (large, small)
    assert "median_ms" in found["latency"]["torch-cpu-1t"] and published["latency"] == {}
    report = (run_dir / "report.md").read_text()
    assert "validation mIoU" in report and "MACs at 48x64" in report and "figures/path.png" in report
    assert summary["search"]["final"]["path_log_prob"] < 0 and summary["genotype"]["path"] == list(genotype.path)
    assert_commands_parse(summary["commands"])


def test_trained_model_reexports_through_the_generic_command_with_sizes_from_its_checkpoint(finished_run, tmp_path):
    from nasdeploy.export.source import build_export_model

    run_dir, _, _ = finished_run
    source = build_export_model(run_dir / "genotype.json", net="segmentation", checkpoint=run_dir / "train" / "model.pt")
    assert source.net_kwargs["channels"] == 2 and source.net_kwargs["aspp_channels"] == 8
    assert source.net_kwargs["num_classes"] == 4
    with pytest.raises(CheckpointError, match="channels=2, but channels=3"):
        build_export_model(run_dir / "genotype.json", net="segmentation", checkpoint=run_dir / "train" / "model.pt",
                           channels=3)
    with pytest.raises(CheckpointError, match="trained for"):
        build_export_model("AutoDeepLab", net="segmentation", checkpoint=run_dir / "train" / "model.pt")


def test_finished_run_is_not_redone(finished_run):
    run_dir, _, _ = finished_run
    config = pipeline_config_from_dict(TINY, Path("."), "tiny.yaml")
    again = run_pipeline(config, run_dir, progress=False)
    assert again.ran == [] and "search" in again.skipped


def test_pipeline_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="unknown search space 'nasnet'"):
        pipeline_config_from_dict({**TINY, "space": "nasnet"}, Path("."), "x.yaml")
    with pytest.raises(ConfigError, match="profile.net must be one of segmentation"):
        pipeline_config_from_dict({**TINY, "profile": {"net": "cifar"}}, Path("."), "x.yaml")
    with pytest.raises(ConfigError, match="macs_at"):
        pipeline_config_from_dict({**TINY, "profile": {"macs_at": [[1024]]}}, Path("."), "x.yaml")


@pytest.mark.parametrize("name", ["autodeeplab_demo_pipeline.yaml", "autodeeplab_cityscapes_pipeline.yaml"])
def test_shipped_autodeeplab_pipeline_configs_validate(name):
    from nasdeploy.config.autodeeplab import AutoDeepLabSearchConfig, AutoDeepLabTrainConfig

    cfg = load_pipeline_config(CONFIGS / name)
    assert cfg.space == "autodeeplab" and cfg.profile.net == "segmentation"
    search, train = cfg.search, cfg.train
    assert isinstance(search, AutoDeepLabSearchConfig) and isinstance(train, AutoDeepLabTrainConfig)
    if "cityscapes" in name:
        assert search.supernet.layers == 12 and search.search.epochs == 40 and search.search.arch_start_epoch == 20
        assert train.net.filter_multiplier == 20 and cfg.profile.input_size == (1024, 2048)
    else:
        assert cfg.profile.macs_at == ((1024, 2048),)


def test_search_and_train_commands_run_auto_deeplab_configs(tmp_path, capsys):
    from nasdeploy.utils.yamlconfig import dump_yaml, load_yaml

    search_cfg = tmp_path / "autodeeplab_search.yaml"
    search_cfg.write_text(dump_yaml(SEARCH))
    train_cfg = tmp_path / "autodeeplab_train.yaml"
    train_cfg.write_text(dump_yaml({"space": "autodeeplab", **TRAIN}))
    search_dir, train_dir = tmp_path / "s", tmp_path / "t"

    def run(args: list[str]) -> str:
        try:
            main(args)
        except SystemExit as exc:
            assert not exc.code, capsys.readouterr()
        return capsys.readouterr().out

    out = run(["search", "--config", str(search_cfg), "--out", str(search_dir), "--no-progress", "search.epochs=1"])
    assert "searched 1/1 epochs" in out and (search_dir / "genotype.json").is_file()
    # Resuming from the run directory alone reuses its stored config (config.yaml, headed by its space).
    out = run(["search", "--out", str(search_dir), "--no-progress"])
    assert "searched 1/1 epochs" in out
    out = run(["train", "--config", str(train_cfg), "--genotype", str(search_dir), "--out", str(train_dir),
               "--no-progress", "train.epochs=1"])
    assert "val mIoU" in out and (train_dir / "model.pt").is_file()
    stored = load_yaml(train_dir / "config.yaml")
    assert stored["space"] == "autodeeplab"
    assert stored["net"]["genotype"] == str(search_dir / "genotype.json") and stored["train"]["epochs"] == 1


def test_config_space_detection():
    from nasdeploy.spaces.table import space_of_config

    assert space_of_config({"supernet": {}, "search": {}}).name == "autodeeplab"
    assert space_of_config({"net": {}, "train": {}}).name == "autodeeplab"
    assert space_of_config({"model": {}, "search": {}}).name == "darts_cnn"
    assert space_of_config({"space": "autodeeplab"}).name == "autodeeplab"
    assert space_of_config({"space": "darts_rnn", "model": {}}).name == "darts_rnn"
    with pytest.raises(ConfigError, match="unknown search space 'rnn'"):
        space_of_config({"space": "rnn"})
