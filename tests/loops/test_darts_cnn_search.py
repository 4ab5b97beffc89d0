"""The search loop: bitwise resume, run-directory contract, finished runs not redone, config checks."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from nasdeploy.config.darts_cnn import DartsCnnSearchConfig
from nasdeploy.errors import ConfigError
from nasdeploy.genotypes import load_genotype
from nasdeploy.search.darts_cnn_loop import run_search
from nasdeploy.utils.checkpoint import load_checkpoint
from nasdeploy.utils.yamlconfig import from_dict, load_config, to_dict

TINY = ["data.dataset=demo", "data.demo_train_size=32", "model.channels=4", "model.layers=3", "model.steps=2",
        "model.multiplier=2", "search.epochs=2", "search.batch_size=8", "search.eval_images=8",
        "search.deterministic=true", "search.threads=1", "search.seed=5"]


def tiny_config(*extra: str):
    return load_config(DartsCnnSearchConfig, None, TINY + list(extra))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("search_full")
    return out, run_search(tiny_config(), out, progress=False)


def test_resume_after_first_checkpoint_is_bitwise_identical(tmp_path, uninterrupted):
    full_dir, full = uninterrupted
    partial = run_search(tiny_config(), tmp_path, stop_after_epoch=1, progress=False)
    assert not partial.finished and partial.epochs_done == 1
    assert not (tmp_path / "genotype.json").exists()
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")  # weights_only=True
    assert ckpt["epoch"] == 1 and ckpt["kind"] == "search"
    assert {"optimizer", "arch_optimizer", "scheduler", "rng"} <= set(ckpt)
    assert ckpt["meta"]["config"] == to_dict(tiny_config()) and ckpt["meta"]["space"] == "darts_cnn"
    assert "alphas_normal" in ckpt["model"] and "alphas_reduce" in ckpt["model"]

    resumed = run_search(tiny_config(), tmp_path, progress=False)
    assert resumed.finished and resumed.epochs_done == 2
    assert torch.equal(resumed.alphas_normal, full.alphas_normal)
    assert torch.equal(resumed.alphas_reduce, full.alphas_reduce)
    assert resumed.genotype == full.genotype
    # The logs tell the same story (times aside), with no epoch repeated.
    def strip(path):
        return [{k: v for k, v in json.loads(line).items() if "time" not in k} for line in path.read_text().splitlines()]
    assert strip(tmp_path / "log.jsonl") == strip(full_dir / "log.jsonl")
    assert strip(tmp_path / "alphas.jsonl") == strip(full_dir / "alphas.jsonl")
    full_state = load_checkpoint(full_dir / "checkpoint.pt")["model"]
    resumed_state = load_checkpoint(tmp_path / "checkpoint.pt")["model"]
    assert all(torch.equal(full_state[k], resumed_state[k]) for k in full_state)


def test_run_directory_contents(uninterrupted):
    out, result = uninterrupted
    assert load_genotype(out / "genotype.json", "cnn_cell") == result.genotype
    done = json.loads((out / "done.json").read_text())
    assert done["finished"] and done["epochs"] == 2 and "valid_acc" in done["final"]
    rows = [json.loads(line) for line in (out / "alphas.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    normal = torch.tensor(rows[-1]["alphas_normal"])
    assert normal.shape == (5, 8)
    torch.testing.assert_close(normal.sum(dim=1), torch.ones(5))
    torch.testing.assert_close(normal, torch.softmax(result.alphas_normal, dim=-1))
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in logs] == [1, 2]
    assert logs[0]["lr"] == pytest.approx(0.025) and logs[1]["lr"] == pytest.approx((0.025 + 0.001) / 2)
    assert all(0.0 <= r["train_acc"] <= 1.0 and r["train_loss"] > 0 for r in logs)
    stored = from_dict(DartsCnnSearchConfig, yaml.safe_load((out / "config.yaml").read_text()))
    assert stored == tiny_config()


def test_finished_run_is_not_redone(uninterrupted, capsys):
    out, result = uninterrupted
    before = (out / "checkpoint.pt").stat().st_mtime_ns
    again = run_search(tiny_config(), out)
    assert again.was_finished and again.genotype == result.genotype
    assert torch.equal(again.alphas_normal, result.alphas_normal)
    assert (out / "checkpoint.pt").stat().st_mtime_ns == before
    assert "finished" in capsys.readouterr().out
    # A finished run checks its stored config before reporting "nothing to do".
    with pytest.raises(ConfigError, match=r"different config .*search.lr"):
        run_search(tiny_config("search.lr=0.05"), out, progress=False)


def test_resume_with_a_different_config_is_refused(tmp_path):
    run_search(tiny_config("search.epochs=3"), tmp_path, stop_after_epoch=1, progress=False)
    with pytest.raises(ConfigError, match=r"different config .*search.lr: 0.025 there vs 0.05 now"):
        run_search(tiny_config("search.epochs=3", "search.lr=0.05"), tmp_path, progress=False)


def test_too_little_data_for_a_batch_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="fewer than one batch"):
        run_search(tiny_config("search.batch_size=32"), tmp_path, progress=False)


@pytest.mark.parametrize("override, match", [
    ("search.epoch=2", "unknown config key 'search.epoch'; did you mean 'search.epochs'"),
    ("search.order=third", "search.order must be 'first' or 'second'"),
    ("search.lr=fast", "search.lr must be a number"),
    ("model.channels=7", "even"),
    ("search.arch_betas=[0.5]", "search.arch_betas must have 2 values"),
])
def test_config_errors_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(override)


def test_float_strings_from_yaml_are_numbers():
    assert tiny_config("search.arch_lr=3e-4").search.arch_lr == pytest.approx(3e-4)


# -- what the search publishes: budget by construction and the collapse guards -------------------------

@pytest.fixture(scope="module")
def two_node_table(tmp_path_factory):
    from nasdeploy.genotypes import CNN_PRIMITIVES
    from nasdeploy.profile import cost_table_build as ctb
    from nasdeploy.profile.cost_table import CellSpace, save_cost_table

    table = ctb.build_cost_table(CellSpace("darts_cnn", CNN_PRIMITIVES, 2, 2), None, net="cifar", channels=8, layers=5)
    return table, str(save_cost_table(table, tmp_path_factory.mktemp("table") / "table.json"))


def _final_weights(result):
    from nasdeploy.spaces.darts_cnn_derive import edge_op_weights

    return edge_op_weights(result.alphas_normal, result.alphas_reduce, 2, result.betas_normal, result.betas_reduce)


def _logs(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_the_published_genotype_is_the_best_within_the_budget(tmp_path, uninterrupted, two_node_table):
    from nasdeploy.spaces.cell_knapsack import cheapest_cost
    from nasdeploy.spaces.darts_cnn_budget import DartsCnnCellCosts, derive_genotype_under_budget

    table, path = two_node_table
    _, free = uninterrupted
    costs = DartsCnnCellCosts.from_table(table)
    nodes = [costs.normal[:2], costs.normal[2:], costs.reduce[:2], costs.reduce[2:]]
    cheapest = costs.fixed + cheapest_cost(nodes, range(1, 8))
    target = int(cheapest + 0.5 * (table.genotype_cost(free.genotype) - cheapest))
    # weight 0: the hinge adds nothing, so the alphas are the unconstrained run's and the budget must bind.
    out = tmp_path / "budget"
    result = run_search(tiny_config(f"search.cost.table={path}", f"search.cost.target={target}",
                                    "search.cost.weight=0.0"), out, progress=False)
    assert torch.equal(result.alphas_normal, free.alphas_normal)
    want = derive_genotype_under_budget(*_final_weights(result), costs, target, steps=2, multiplier=2)
    assert want.binding and result.genotype == want.genotype != free.genotype
    assert load_genotype(out / "genotype.json", "cnn_cell") == want.genotype
    done = json.loads((out / "done.json").read_text())
    budget = done["budget"]
    assert budget["target"] == target and budget["binding"] and budget["method"].startswith("exact")
    assert budget["derived"] == table.genotype_cost(want.genotype) <= target < budget["unconstrained"]
    assert budget["unconstrained"] == table.genotype_cost(free.genotype)
    assert json.loads((out / "genotype.json").read_text())["meta"]["budget"] == budget
    for record in _logs(out):  # every epoch: expected, unconstrained and budgeted costs, and whether it binds
        assert record["derived_macs"] <= target and record["cost_target"] == target
        assert record["budget_binds"] == (record["unconstrained_macs"] > target)
        assert {"expected_macs", "normal_skips", "parameter_free_ops"} <= set(record)
    alphas_rows = [json.loads(line) for line in (out / "alphas.jsonl").read_text().splitlines()]
    assert alphas_rows[-1]["genotype"] == done["genotype"]
    # derive: unconstrained keeps the DARTS rule's genotype and says so.
    plain = run_search(tiny_config(f"search.cost.table={path}", f"search.cost.target={target}",
                                   "search.cost.weight=0.0", "search.cost.derive=unconstrained"),
                       tmp_path / "plain", progress=False)
    assert plain.genotype == free.genotype
    assert json.loads((tmp_path / "plain" / "done.json").read_text())["budget"]["method"].startswith("the DARTS rule")


def test_an_unmeetable_budget_fails_before_the_first_epoch(tmp_path, two_node_table):
    table, path = two_node_table
    with pytest.raises(ConfigError, match=r"no genotype fits the macs budget 1,000 MACs: the cheapest one .* costs"):
        run_search(tiny_config(f"search.cost.table={path}", "search.cost.target=1000"), tmp_path, progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_p_darts_caps_the_skip_connections_of_the_published_cell(tmp_path, uninterrupted):
    from nasdeploy.genotypes import CNN_PRIMITIVES
    from nasdeploy.spaces.darts_cnn_budget import DartsCnnCellCosts, derive_genotype_under_budget
    from nasdeploy.spaces.darts_cnn_guards import skip_connections

    _, free = uninterrupted
    assert skip_connections(free.genotype) >= 1  # the instance has something to cap
    out = tmp_path / "capped"
    result = run_search(tiny_config("search.collapse.p_darts=true", "search.collapse.max_skips=0"), out, progress=False)
    want = derive_genotype_under_budget(*_final_weights(result), DartsCnnCellCosts.zeros(2, CNN_PRIMITIVES),
                                        float("inf"), steps=2, multiplier=2, max_skips=0)
    assert result.genotype == want.genotype and skip_connections(result.genotype) == 0
    done = json.loads((out / "done.json").read_text())
    assert done["guards"]["p_darts"]["acted"] and done["guards"]["p_darts"]["max_skips"] == 0
    assert done["budget"] is None and done["normal_skips"] == 0
    assert all("skip_cap_acted" in r for r in _logs(out))
    # A cap the DARTS rule meets changes nothing.
    loose = run_search(tiny_config("search.collapse.p_darts=true", "search.collapse.max_skips=4"), tmp_path / "loose",
                       progress=False)
    assert loose.genotype == free.genotype
    assert not json.loads((tmp_path / "loose" / "done.json").read_text())["guards"]["p_darts"]["acted"]


def test_darts_plus_stops_at_the_first_epoch_with_too_many_skips(tmp_path, uninterrupted):
    full_dir, free = uninterrupted
    first = next(r["epoch"] for r in _logs(full_dir) if r["normal_skips"] >= 1)
    assert first < 2  # the instance stops early
    out = tmp_path / "plus"
    result = run_search(tiny_config("search.collapse.darts_plus=true", "search.collapse.stop_skips=1"), out,
                        progress=False)
    done = json.loads((out / "done.json").read_text())
    assert result.finished and result.epochs_done == first == done["epochs"]
    assert done["stopped_early"]["epoch"] == first and "DARTS+" in done["stopped_early"]["reason"]
    assert done["guards"]["darts_plus"] == {**done["guards"]["darts_plus"], "acted": True, "epoch": first}
    assert [r["genotype"] for r in _logs(out)] == [r["genotype"] for r in _logs(full_dir)][:first]
    assert load_genotype(out / "genotype.json", "cnn_cell") == result.genotype
    # Off, or a criterion never met: the search runs all its epochs.
    never = run_search(tiny_config("search.collapse.darts_plus=true", "search.collapse.stop_skips=4"),
                       tmp_path / "never", progress=False)
    assert never.epochs_done == 2 and never.genotype == free.genotype


def test_darts_minus_decays_its_auxiliary_skip_and_resumes_bitwise(tmp_path):
    config = tiny_config("search.collapse.darts_minus=true", "search.collapse.aux_skip_weight=0.8")
    full = run_search(config, tmp_path / "full", progress=False)
    assert [r["aux_skip_weight"] for r in _logs(tmp_path / "full")] == [0.8, 0.4]
    state = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    assert any("_aux_skips" in k for k in state)  # the strided auxiliary skips are trained weights
    done = json.loads((tmp_path / "full" / "done.json").read_text())
    assert done["guards"]["darts_minus"]["acted"] and done["guards"]["darts_minus"]["aux_skip_weight"] == 0.8
    run_search(config, tmp_path / "part", stop_after_epoch=1, progress=False)
    resumed = run_search(config, tmp_path / "part", progress=False)
    assert torch.equal(resumed.alphas_normal, full.alphas_normal) and resumed.genotype == full.genotype
    with pytest.raises(ConfigError, match="plain DARTS"):
        tiny_config("search.collapse.darts_minus=true", "model.partial_channels=2")


def test_pc_darts_betas_and_a_latency_budget(tmp_path, two_node_table):
    """The budgeted derivation ranks edges by softmax(alpha) x node-normalised betas, on the table's latency."""
    import dataclasses

    import numpy as np

    from nasdeploy.profile.cost_table import save_cost_table
    from nasdeploy.spaces.cell_knapsack import cheapest_cost
    from nasdeploy.spaces.darts_cnn_budget import DartsCnnCellCosts, derive_genotype_under_budget

    table, _ = two_node_table
    rng = np.random.default_rng(0)
    timed = dataclasses.replace(table, latency_ms=rng.uniform(0.01, 0.2, table.macs.shape),
                                fixed=tuple(dataclasses.replace(f, latency_ms=0.05) for f in table.fixed))
    path = save_cost_table(timed, tmp_path / "timed.json")
    costs = DartsCnnCellCosts.from_table(timed, "latency")
    nodes = [costs.normal[:2], costs.normal[2:], costs.reduce[:2], costs.reduce[2:]]
    target = round(1.05 * (costs.fixed + cheapest_cost(nodes, range(1, 8))), 4)  # tight: it binds
    result = run_search(tiny_config("model.partial_channels=2", f"search.cost.table={path}", "search.cost.metric=latency",
                                    f"search.cost.target={target}", "search.cost.weight=0.0"),
                        tmp_path / "run", progress=False)
    assert result.betas_normal is not None
    want = derive_genotype_under_budget(*_final_weights(result), costs, target, steps=2, multiplier=2)
    assert result.genotype == want.genotype
    budget = json.loads((tmp_path / "run" / "done.json").read_text())["budget"]
    assert budget["metric"] == "latency" and budget["unit"] == "ms" and budget["derived"] <= target
    assert want.binding and budget["binding"] and budget["unconstrained"] > target
    assert budget["derived_macs"] == table.genotype_cost(want.genotype, "macs")
