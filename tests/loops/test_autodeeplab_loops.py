"""Auto-DeepLab search loop and segmentation training loop: protocol, artifacts, resume, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from nasdeploy.cli.main import main
from nasdeploy.config.autodeeplab import AutoDeepLabSearchConfig, AutoDeepLabTrainConfig
from nasdeploy.errors import ConfigError
from nasdeploy.genotypes import load_genotype
from nasdeploy.search.autodeeplab_loop import run_search, split_halves
from nasdeploy.spaces.autodeeplab import AutoDeepLabSupernet
from nasdeploy.train.autodeeplab_loop import load_segmentation_model, run_training
from nasdeploy.utils.checkpoint import load_checkpoint
from nasdeploy.utils.yamlconfig import from_dict

SEARCH = {
    "supernet": {"layers": 2, "filter_multiplier": 2, "blocks": 2, "stem_channels": 4, "mixed_op": "reference"},
    "data": {"dataset": "synthetic", "image_size": [32, 32], "num_train": 4, "num_val": 1, "crop_size": [32, 32]},
    "search": {"epochs": 2, "arch_start_epoch": 1, "batch_size": 2, "steps_per_epoch": 1, "threads": 1},
}
TRAIN = {
    "net": {"genotype": "AutoDeepLab", "filter_multiplier": 2, "aspp_channels": 8, "decoder_channels": 8,
            "low_level_channels": 4},
    "data": {"dataset": "synthetic", "image_size": [32, 32], "num_train": 4, "num_val": 2, "crop_size": [32, 32]},
    "train": {"epochs": 2, "batch_size": 2, "steps_per_epoch": 1, "threads": 1},
}


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_halves_are_disjoint_and_cover():
    a, b = split_halves(11, seed=0)
    assert sorted(a + b) == list(range(11)) and not set(a) & set(b) and len(a) == 5


def test_search_protocol_artifacts_and_exact_resume(tmp_path):
    cfg = from_dict(AutoDeepLabSearchConfig, SEARCH)
    full = run_search(cfg, tmp_path / "full", progress=False)
    records = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert [r["arch_updates"] for r in records] == [False, True]
    assert all(0.0 <= r["val_miou"] <= 1.0 for r in records)
    g = load_genotype(full.genotype_path, expected_kind="autodeeplab")
    assert g.layers == 2 and g.blocks == 2 and full.epochs_done == 2

    # Interrupted after epoch 1: alpha and beta are still at their initial values (no arch update yet).
    part = run_search(cfg, tmp_path / "part", progress=False, stop_after_epoch=1)
    assert part.epochs_done == 1
    state = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    torch.manual_seed(0)
    init = AutoDeepLabSupernet(from_dict(AutoDeepLabSearchConfig, 
        {**SEARCH, "supernet": {**SEARCH["supernet"], "num_classes": 4}}).supernet)
    assert torch.equal(state["model"]["betas"], init.betas.detach())
    assert torch.equal(state["model"]["alphas"], init.alphas.detach())
    # Resuming finishes with exactly the uninterrupted run's architecture.
    resumed = run_search(cfg, tmp_path / "part", progress=False)
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "part" / "checkpoint.pt")["model"]
    torch.testing.assert_close(a["betas"], b["betas"], rtol=0, atol=1e-6)
    torch.testing.assert_close(a["alphas"], b["alphas"], rtol=0, atol=1e-6)
    assert not torch.equal(a["betas"], init.betas.detach())
    assert resumed.path == full.path

    changed = from_dict(AutoDeepLabSearchConfig, {**SEARCH, "search": {**SEARCH["search"], "lr": 0.1}})
    with pytest.raises(ConfigError, match="different config"):
        run_search(changed, tmp_path / "full", progress=False)


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match=r"unknown config key 'search.epoch'; did you mean 'search.epochs'\? \(valid: epochs"):
        from_dict(AutoDeepLabSearchConfig, {"search": {"epoch": 3}})
    with pytest.raises(ConfigError, match="batch_size >= 2"):
        from_dict(AutoDeepLabSearchConfig, {"search": {"batch_size": 1}})
    with pytest.raises(ConfigError, match="net.filter_multiplier must be an integer"):
        from_dict(AutoDeepLabTrainConfig, {"net": {"filter_multiplier": "20"}})


def test_training_writes_a_model_that_reloads(tmp_path):
    result = run_training(from_dict(AutoDeepLabTrainConfig, TRAIN), None, tmp_path, progress=False)
    summary = json.loads((tmp_path / "done.json").read_text())
    assert summary["finished"] and 0.0 <= summary["val_miou"] <= 1.0 and summary["majority_class_miou"] > 0
    model = load_segmentation_model(result.model_path)
    x = torch.randn(1, 3, 24, 24)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["kind"] == "train" and state["meta"]["space"] == "autodeeplab" and state["meta"]["epoch"] == 2
    with torch.no_grad():
        assert model(x).shape == (1, 4, 24, 24)


def test_cli_search_and_train_through_the_generic_commands(tmp_path, capsys):
    import yaml

    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump({"space": "autodeeplab", **SEARCH}))
    main(["search", "--config", str(config), "--out", str(tmp_path / "run"), "search.epochs=1", "--no-progress"])
    assert "genotype: " in capsys.readouterr().out
    assert load_genotype(tmp_path / "run" / "genotype.json").layers == 2
    train_config = tmp_path / "train.yaml"
    train_config.write_text(yaml.safe_dump({"space": "autodeeplab", **SEARCH}))
    with pytest.raises(SystemExit) as info:
        main(["train", "--genotype", str(tmp_path / "run" / "genotype.json"), "--config", str(train_config),
              "--out", str(tmp_path / "t")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown config key 'search'" in err and err.count("\n") == 1


def test_demo_training_beats_majority_class_and_exports(tmp_path):
    """The demo pipeline's claim: a trained net clearly beats predicting the majority class, and exports with parity."""
    np = pytest.importorskip("numpy")
    ort = pytest.importorskip("onnxruntime")
    from nasdeploy.genotypes import get_genotype, make_autodeeplab_genotype, save_genotype

    genotype = save_genotype(make_autodeeplab_genotype(get_genotype("AutoDeepLab").cell, [0, 0, 0, 1]), tmp_path / "g.json")
    cfg = from_dict(AutoDeepLabTrainConfig, {
        "net": {"genotype": str(genotype), "filter_multiplier": 4, "aspp_channels": 16, "decoder_channels": 16,
                "low_level_channels": 8, "dropout": 0.0},
        "data": {"dataset": "synthetic", "image_size": [64, 64], "num_train": 64, "num_val": 16,
                 "crop_size": [64, 64], "scale_range": [0.75, 1.25]},
        "train": {"epochs": 8, "batch_size": 8, "lr": 0.2, "threads": 1, "seed": 0},
    })
    result = run_training(cfg, None, tmp_path / "run", progress=False)
    # The margin over the majority class (0.200) over train.seed 0-9 in place of this test's seed 0 (one thread;
    # 2026-12-02): 0.359 0.173 0.330 0.337 0.310 0.485 0.355 0.349 0.410 0.162, mean 0.327 sd 0.097. Mean - 4 sd
    # (-0.063) is below the majority class itself, so the threshold is the worst seen (the old 0.2 failed for 2 of
    # the 10 seeds; 12 epochs move the mean, not the spread: sd 0.105 over seeds 0-4).
    assert result.val_miou > result.majority_miou + 0.16, (result.val_miou, result.majority_miou)

    model = load_segmentation_model(result.model_path)
    onnx_path = tmp_path / "model.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), str(onnx_path), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}})
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 64, 64), (3, 3, 96, 128)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = model(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


COST = {"table": "auto", "input_size": [32, 48], "filter_multiplier": 2, "aspp_channels": 8, "decoder_channels": 8,
        "low_level_channels": 4, "weight": 0.0}


def with_cost(**cost):
    return from_dict(AutoDeepLabSearchConfig, {**SEARCH, "search": {**SEARCH["search"], "cost": {**COST, **cost}}})


def logs(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_budgeted_search_publishes_the_budgeted_decode_and_resumes(tmp_path, monkeypatch):
    from nasdeploy.profile.autodeeplab_cost_table_build import load_autodeeplab_cost_table
    from nasdeploy.spaces.autodeeplab_budget import decode_under_budget

    monkeypatch.setenv("NASDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    free_cfg = from_dict(AutoDeepLabSearchConfig, SEARCH)
    free = run_search(free_cfg, tmp_path / "free", progress=False)
    # A loose budget first, to learn the table and the unconstrained cost (weight 0: the alphas are the free run's).
    loose = run_search(with_cost(target=1e12), tmp_path / "loose", progress=False)
    table = load_autodeeplab_cost_table(tmp_path / "loose" / "cost_table.json")
    assert loose.genotype == free.genotype and len(list((tmp_path / "cache").rglob("*.json"))) == 1
    budget = json.loads((tmp_path / "loose" / "done.json").read_text())["budget"]
    assert not budget["binding"] and budget["unconstrained"] == budget["derived"] == table.genotype_cost(free.genotype)
    records = logs(tmp_path / "loose")
    assert [r["arch_updates"] for r in records] == [False, True] and all("expected_macs" in r for r in records)

    target = budget["unconstrained"] - 1
    out = tmp_path / "tight"
    part = run_search(with_cost(target=target), out, stop_after_epoch=1, progress=False)
    assert (out / "cost_table.json").is_file() and not part.finished
    result = run_search(with_cost(target=target), out, progress=False)
    state = load_checkpoint(out / "checkpoint.pt")["model"]
    want = decode_under_budget(state["alphas"], state["betas"], table, target, name="autodeeplab_search")
    assert want.binding and result.genotype == want.genotype and result.path == tuple(want.genotype.path)
    assert load_genotype(out / "genotype.json", "autodeeplab") == want.genotype
    done = json.loads((out / "done.json").read_text())
    assert done["budget"]["binding"] and done["budget"]["derived"] == want.cost <= target
    assert done["budget"]["method"].startswith("exact")
    assert json.loads((out / "genotype.json").read_text())["meta"]["budget"] == done["budget"]
    assert all(r["derived_macs"] <= target and r["budget_binds"] == (r["unconstrained_macs"] > target)
               for r in logs(out))


def test_the_cost_term_acts_only_once_architecture_updates_run(tmp_path, monkeypatch):
    """arch_loss with the hinge minus without it: 0 before arch_start_epoch, weight * max(0, E / target - 1) after."""
    monkeypatch.setenv("NASDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    free = logs(run_search(from_dict(AutoDeepLabSearchConfig, SEARCH), tmp_path / "free", progress=False).out_dir)
    probe = logs(run_search(with_cost(target=1e12), tmp_path / "probe", progress=False).out_dir)
    expected = probe[0]["expected_macs"]  # after epoch 1: the initial alpha/beta (no update yet)
    target = 0.9 * expected
    costed = logs(run_search(with_cost(target=target, weight=2.0, derive="unconstrained"), tmp_path / "cost",
                             progress=False).out_dir)
    assert costed[0]["arch_loss"] is None and free[0]["arch_loss"] is None
    assert costed[1]["arch_loss"] - free[1]["arch_loss"] == pytest.approx(2.0 * (expected / target - 1.0), rel=1e-5)


def test_an_unmeetable_autodeeplab_budget_fails_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("NASDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"no Auto-DeepLab genotype fits the macs budget 1,000 MACs: the cheapest"):
        run_search(with_cost(target=1000), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
