"""The selection protocol over several seeds, with the child processes replaced by a fake that writes run folders."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import pytest

from nasdeploy.config.selection import SelectionOptions, parse_seeds
from nasdeploy.errors import ConfigError, NasDeployError
from nasdeploy.genotypes import CNN_CELL_OPS, get_genotype, load_genotype, save_genotype
from nasdeploy.search import selection
from nasdeploy.search.selection_record import SeedResult, SelectionRecord, best_seed, load_selection
from nasdeploy.spaces.table import get_space
from nasdeploy.utils.files import write_json_atomic

SEARCH = {
    "data": {"dataset": "demo", "demo_train_size": 64},
    "model": {"channels": 4, "layers": 3, "steps": 4, "multiplier": 4},
    "search": {"epochs": 1, "batch_size": 8, "threads": "auto", "lr": 0.05},
}


def genotype_of(seed: int):
    """A distinct valid genotype per seed: DARTS_V2 with its first normal op replaced."""
    base = get_genotype("DARTS_V2")
    first = (CNN_CELL_OPS[seed % len(CNN_CELL_OPS)], base.normal[0][1])
    return dataclasses.replace(base, normal=(first, *base.normal[1:]), name=None)


class FakeChildren:
    """Stands in for `python -m nasdeploy search|train`: writes what a finished run leaves, records the calls."""

    def __init__(self, metrics: dict[int, float], fail: tuple[tuple[str, int], ...] = ()):
        self.metrics, self.fail, self.calls = metrics, fail, []

    def __call__(self, command, log_path, prefix, echo):
        kind, out = command[3], Path(command[command.index("--out") + 1])
        overrides = dict(a.split("=", 1) for a in command if "=" in a and not a.startswith("-"))
        seed = int(overrides["search.seed"]) if kind == "search" else int(out.parent.name.split("-")[1])
        self.calls.append((kind, seed, overrides))
        if (kind, seed) in self.fail:
            return 1, "error: boom"
        out.mkdir(parents=True, exist_ok=True)
        if kind == "search":
            save_genotype(genotype_of(seed), out / "genotype.json")
            final = {"valid_acc": 0.3, "derived_macs": 1e6 * (seed + 1), "expected_macs": 2e6, "cost_target": 5e6}
            write_json_atomic(out / "done.json", {"finished": True, "epochs": 1, "final": final, "time_s": 1.5})
        else:
            assert command[command.index("--genotype") + 1] == str(out.parent / "search")
            write_json_atomic(out / "done.json", {"finished": True, "epochs": 1, "top1": self.metrics[seed],
                                                  "time_s": 0.5})
        return 0, "run directory: ..."


@pytest.fixture
def children(monkeypatch):
    def install(metrics, fail=()):
        fake = FakeChildren(metrics, fail)
        monkeypatch.setattr(selection, "_run_child", fake)
        return fake
    return install


def select(out, seeds, **options):
    return selection.run_selection(get_space("darts_cnn"), SEARCH | options.pop("search", {}),
                                   SelectionOptions(seeds=tuple(seeds), **options), out, progress=False)


def result(seed, metric):
    return SeedResult(seed=seed, genotype=genotype_of(seed), metric=metric)


def test_best_seed_takes_the_best_metric_and_ties_go_to_the_lower_seed():
    results = [result(3, 0.7), result(1, 0.5), result(2, 0.7)]
    assert best_seed(results, higher_is_better=True).seed == 2
    assert best_seed(results, higher_is_better=False).seed == 1
    assert best_seed([result(5, 0.1), result(4, 0.1)], higher_is_better=True).seed == 4


def test_record_statistics_and_json_round_trip(tmp_path):
    results = [result(2, 0.61), result(0, 0.55), result(1, 0.58)]
    record = SelectionRecord.from_results("darts_cnn", "top1", True, results)
    assert [r.seed for r in record.seeds] == [0, 1, 2] and record.chosen_seed == 2
    assert record.mean == pytest.approx(statistics.fmean([0.61, 0.55, 0.58]))
    assert record.std == pytest.approx(statistics.stdev([0.61, 0.55, 0.58]))
    selection.save_selection(record, tmp_path)
    assert load_selection(tmp_path) == record
    assert SelectionRecord.from_results("darts_cnn", "top1", True, [result(4, 0.5)]).std == 0.0


def test_every_seed_is_searched_trained_and_the_best_kept(tmp_path, children):
    fake = children({1: 0.5, 2: 0.7, 3: 0.7})
    record = select(tmp_path, [3, 1, 2], search={"search": {**SEARCH["search"], "threads": 1}})
    assert [(kind, seed) for kind, seed, _ in fake.calls] == [(k, s) for s in (3, 1, 2) for k in ("search", "train")]
    assert record.chosen_seed == 2 and [r.metric for r in record.seeds] == [0.5, 0.7, 0.7]
    assert load_selection(tmp_path) == record
    assert load_genotype(tmp_path / "genotype.json") == genotype_of(2)
    assert record.chosen.cost == {"derived_macs": 3e6, "expected_macs": 2e6, "cost_target": 5e6}
    assert record.chosen.search_dir == "seed-2/search" and record.chosen.search_time_s == 1.5
    stored = json.loads((tmp_path / "selection.json").read_text())
    assert stored["chosen_seed"] == 2 and stored["metric"] == "top1" and len(stored["seeds"]) == 3
    # The seeds' search config is the given one; each child gets its own seed on its command line.
    assert all(o == {"search.seed": str(s)} for kind, s, o in fake.calls if kind == "search")


def test_a_rerun_runs_only_what_is_missing(tmp_path, children):
    children({0: 0.4, 1: 0.6})
    select(tmp_path, [0, 1])
    fake = children({0: 0.4, 1: 0.6, 2: 0.9})
    record = select(tmp_path, [0, 1, 2])
    assert [(kind, seed) for kind, seed, _ in fake.calls] == [("search", 2), ("train", 2)]
    assert record.chosen_seed == 2 and len(record.seeds) == 3


def test_a_failed_seed_leaves_the_others_finished_and_resumes(tmp_path, children):
    children({0: 0.4, 1: 0.6, 2: 0.5}, fail=(("search", 1),))
    with pytest.raises(selection.SelectionRunError, match=r"1 of 3 seeds failed: seed 1: search failed \(exit code 1: "
                                                          r"error: boom; log .*seed-1/search.log\)"):
        select(tmp_path, [0, 1, 2])
    assert not (tmp_path / "selection.json").exists() and not (tmp_path / "genotype.json").exists()
    assert all((tmp_path / f"seed-{s}" / "train" / "done.json").is_file() for s in (0, 2))
    fake = children({0: 0.4, 1: 0.6, 2: 0.5})
    assert select(tmp_path, [0, 1, 2]).chosen_seed == 1
    assert [(kind, seed) for kind, seed, _ in fake.calls] == [("search", 1), ("train", 1)]


def test_parallel_children_share_the_machine_cores_unless_the_config_sets_a_count(tmp_path, children, monkeypatch):
    monkeypatch.setattr(selection, "auto_threads", lambda share=1: 8 // share)
    fake = children({0: 0.1, 1: 0.2})
    select(tmp_path / "auto", [0, 1], parallel=2)
    assert {o.get("search.threads") for kind, _, o in fake.calls if kind == "search"} == {"4"}
    assert {o.get("train.threads") for kind, _, o in fake.calls if kind == "train"} == {"4"}
    fake = children({0: 0.1, 1: 0.2})
    select(tmp_path / "fixed", [0, 1], parallel=2, search={"search": {**SEARCH["search"], "threads": 1}})
    assert all("search.threads" not in o and "train.threads" not in o for _, _, o in fake.calls)


def test_a_changed_config_is_refused_and_force_starts_over(tmp_path, children):
    children({0: 0.4})
    select(tmp_path, [0])
    changed = {"search": {**SEARCH["search"], "lr": 0.1}}
    with pytest.raises(ConfigError, match="different config .*search.lr"):
        select(tmp_path, [0], search=changed)
    with pytest.raises(ConfigError, match="different config .*selection.epochs"):
        select(tmp_path, [0], epochs=5)
    fake = children({0: 0.3})
    record = selection.run_selection(get_space("darts_cnn"), SEARCH | changed, SelectionOptions(seeds=(0,)), tmp_path,
                                     force=True, progress=False)
    assert record.seeds[0].metric == 0.3 and [kind for kind, _, _ in fake.calls] == ["search", "train"]


def test_the_short_training_config_defaults_to_the_search_data_and_supernet_size():
    space = get_space("darts_cnn")
    train = selection.short_training_config(space, SEARCH, SelectionOptions(epochs=2))
    assert train["data"]["demo_train_size"] == 64 and train["data"]["holdout"] == 0.2
    assert train["model"] == {"net": "cifar", "channels": 4, "layers": 3, "auxiliary": False}
    assert train["train"]["epochs"] == 2 and train["train"]["threads"] == "auto" and train["train"]["seed"] == 0
    tuned = selection.short_training_config(space, SEARCH, SelectionOptions(
        train={"model": {"channels": 8}, "data": {"holdout": 0.1}}))
    assert tuned["model"]["channels"] == 8 and tuned["model"]["layers"] == 3 and tuned["data"]["holdout"] == 0.1
    with pytest.raises(ConfigError, match=r"^selection.train: unknown config key 'model.channel'"):
        selection.short_training_config(space, SEARCH, SelectionOptions(train={"model": {"channel": 8}}))


def test_bad_selection_settings_are_one_line_errors(tmp_path):
    for text in ("0,x", "1,1", "-1", ""):
        with pytest.raises(NasDeployError, match="--seeds"):  # a ConfigError, or a LimitError for the range
            parse_seeds(text)
    assert parse_seeds(" 3, 0,1 ") == (3, 0, 1)
    with pytest.raises(ConfigError, match="selection.parallel must be >= 1"):
        SelectionOptions(parallel=0)
    with pytest.raises(ConfigError, match="not supported for the autodeeplab space"):
        selection.run_selection(get_space("autodeeplab"), {}, SelectionOptions(seeds=(0,)), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="needs seeds"):
        selection.run_selection(get_space("darts_cnn"), SEARCH, SelectionOptions(), tmp_path, progress=False)
    assert not any(tmp_path.iterdir())
