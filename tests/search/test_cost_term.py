"""The differentiable cost term: config checks, expected cost by hand, architect gradients (both orders), direction."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from nasdeploy.config.darts_cnn import DartsCnnCostOptions, DartsCnnSearchConfig
from nasdeploy.errors import ConfigError
from nasdeploy.genotypes import CNN_PRIMITIVES
from nasdeploy.profile import cost_table_build as ctb
from nasdeploy.profile.cost_table import save_cost_table
from nasdeploy.search.architect import Architect, ArchitectConfig
from nasdeploy.search.cost import ExpectedCost
from nasdeploy.search.darts_cnn_loop import run_search
from nasdeploy.search.step import classification_loss
from nasdeploy.spaces.darts_cnn import DartsCnnSupernet
from nasdeploy.spaces.darts_cnn_derive import derive_genotype
from nasdeploy.utils.yamlconfig import load_config


@pytest.fixture(scope="module")
def table():
    return ctb.build_cost_table("darts_cnn", None, net="cifar", channels=8, layers=5)


@pytest.fixture(scope="module")
def table_file(tmp_path_factory, table):
    return str(save_cost_table(table, tmp_path_factory.mktemp("cost") / "table.json"))


def hand_expected(table, a_normal, a_reduce, metric="macs"):
    """E[cost] written out cell by cell from the table entries (no cell-type pre-summing)."""
    keep = [k for k, p in enumerate(CNN_PRIMITIVES) if p != "none"]
    values = table.macs if metric == "macs" else table.latency_ms
    total = torch.tensor(table.fixed_total(metric), dtype=torch.float64)
    for cell, reduction in enumerate(table.reductions):
        alphas = a_reduce if reduction else a_normal
        e = 0
        for node in range(4):
            for _ in range(2 + node):
                probs = torch.softmax(alphas[e, keep].double(), dim=0)
                entries = torch.tensor(values[cell, e, keep], dtype=torch.float64)
                total = total + 2.0 / (2 + node) * (probs * entries).sum()
                e += 1
    return total


def test_config_section_is_validated_at_load(table_file):
    cfg = load_config(DartsCnnSearchConfig, None, [f"search.cost.table={table_file}", "search.cost.target=5000000"])
    assert cfg.search.cost == DartsCnnCostOptions(table=table_file, target=5e6)
    assert load_config(DartsCnnSearchConfig, None, []).search.cost is None
    for bad, match in (("search.cost.metric=flops", "metric"), ("search.cost.form=square", "form"),
                       ("search.cost.target=-1", "target"), ("search.cost.value=mean", "value"),
                       ("search.cost.weight=-0.5", "weight"), ("search.cost.derive=greedy", "derive")):
        with pytest.raises(ConfigError, match=match):
            load_config(DartsCnnSearchConfig, None, [f"search.cost.table={table_file}", bad])
    with pytest.raises(ConfigError, match="table"):
        load_config(DartsCnnSearchConfig, None, ["search.cost.target=5"])


def test_expected_cost_matches_hand_computation_and_one_hot_sums(table):
    cost = ExpectedCost(table, DartsCnnCostOptions(table="x"), CNN_PRIMITIVES, 4, 4)
    g = torch.Generator().manual_seed(1)
    a_n, a_r = torch.randn(14, 8, generator=g), torch.randn(14, 8, generator=g)
    torch.testing.assert_close(cost.expected(a_n, a_r), hand_expected(table, a_n, a_r), rtol=1e-12, atol=0)
    # 'none' carries no cost and no cost gradient.
    a_none = a_n.clone()
    a_none[:, 0] += 5.0
    torch.testing.assert_close(cost.expected(a_none, a_r), cost.expected(a_n, a_r), rtol=1e-12, atol=0)
    # One-hot alphas, one op per cell type: E[cost] is the derived genotype's table sum exactly.
    one_hot_n = torch.full((14, 8), -1e4)
    one_hot_n[:, CNN_PRIMITIVES.index("sep_conv_3x3")] = 1e4
    one_hot_r = torch.full((14, 8), -1e4)
    one_hot_r[:, CNN_PRIMITIVES.index("max_pool_3x3")] = 1e4
    derived = derive_genotype(one_hot_n, one_hot_r)
    assert float(cost.expected(one_hot_n, one_hot_r)) == pytest.approx(table.genotype_cost(derived), rel=1e-12)


def test_latency_metric_uses_the_latency_entries(table):
    rng = np.random.default_rng(0)
    timed = dataclasses.replace(table, latency_ms=rng.uniform(0.01, 0.2, table.macs.shape),
                                fixed=tuple(dataclasses.replace(f, latency_ms=0.05) for f in table.fixed))
    cost = ExpectedCost(timed, DartsCnnCostOptions(table="x", metric="latency", target=3.0), CNN_PRIMITIVES, 4, 4)
    a_n, a_r = torch.randn(14, 8), torch.randn(14, 8)
    torch.testing.assert_close(cost.expected(a_n, a_r), hand_expected(timed, a_n, a_r, "latency"), rtol=1e-12, atol=0)
    assert cost.derived_cost(derive_genotype(a_n, a_r)) == pytest.approx(
        timed.genotype_cost(derive_genotype(a_n, a_r), "latency"))
    with pytest.raises(ConfigError, match="MACs only"):
        ExpectedCost(table, DartsCnnCostOptions(table="x", metric="latency"), CNN_PRIMITIVES, 4, 4)


def test_derived_value_hinge_follows_the_derived_genotype(table):
    a_n, a_r = torch.randn(14, 8), torch.randn(14, 8)
    derived = table.genotype_cost(derive_genotype(a_n, a_r))
    zero = torch.zeros((), dtype=torch.float64)
    for target, want in ((2.0 * derived, 0.0), (0.5 * derived, 2.0 * (derived / (0.5 * derived) - 1.0))):
        cost = ExpectedCost(table, DartsCnnCostOptions(table="x", target=target, weight=2.0, value="derived"), CNN_PRIMITIVES, 4, 4)
        assert float(cost.combine(zero, [a_n, a_r])) == pytest.approx(want, rel=1e-9)


def test_supernet_mismatch_is_one_line_error(table):
    with pytest.raises(ConfigError, match="supernet has 2 nodes"):
        ExpectedCost(table, DartsCnnCostOptions(table="x"), CNN_PRIMITIVES, 2, 2)


def _architect_setup(cost, order):
    torch.manual_seed(0)
    model = DartsCnnSupernet(channels=4, num_classes=3, layers=3, steps=4, multiplier=4, mixed_op="reference").double()
    w_opt = torch.optim.SGD(model.weight_parameters(), 0.05, momentum=0.9, weight_decay=3e-4)
    arch = Architect(model, classification_loss, w_opt, ArchitectConfig(order=order), cost=cost)
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64), torch.tensor([0, 2])) for _ in range(2)]
    return model, arch, batches


def _grads(arch, order, batches):
    train, val = batches
    return arch.first_order_grad(val) if order == "first" else arch.second_order_grad(train, val, eta=0.05)


@pytest.mark.parametrize("order,value", [("first", "expected"), ("second", "expected"), ("first", "derived")])
def test_architect_adds_the_hinge_gradient_in_both_orders(table, order, value, one_thread):
    model, plain, batches = _architect_setup(None, order)
    a_n, a_r = (p.detach().clone().requires_grad_(True) for p in model.arch_parameters())
    target = 0.2 * float(hand_expected(table, a_n, a_r).detach())
    opts = DartsCnnCostOptions(table="x", target=target, weight=3.0, form="hinge", value=value)
    _, with_cost, _ = _architect_setup(ExpectedCost(table, opts, CNN_PRIMITIVES, 4, 4), order)
    base = _grads(plain, order, batches)
    total = _grads(with_cost, order, batches)
    hinge = opts.weight * torch.relu(hand_expected(table, a_n, a_r) / target - 1.0)
    expected = torch.autograd.grad(hinge, [a_n, a_r])
    for t, b, e in zip(total, base, expected):
        assert e.abs().max() > 1e-4  # the term is active and not negligible
        torch.testing.assert_close(t - b, e, rtol=1e-6, atol=1e-10)


def test_architect_fbnet_form_first_order(table, one_thread):
    opts = DartsCnnCostOptions(table="x", weight=0.2, beta=0.6, form="fbnet")
    model, arch, (_, val) = _architect_setup(ExpectedCost(table, opts, CNN_PRIMITIVES, 4, 4), "first")
    grads = arch.first_order_grad(val)
    a_n, a_r = model.arch_parameters()
    x, y = val
    loss = F.cross_entropy(model(x), y) * 0.2 * torch.log(hand_expected(table, a_n, a_r) / 1e6) ** 0.6
    for got, want in zip(grads, torch.autograd.grad(loss, [a_n, a_r])):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-10)


TINY = ["data.dataset=demo", "data.demo_train_size=32", "model.channels=4", "model.layers=3", "search.epochs=2",
        "search.batch_size=8", "search.eval_images=8", "search.deterministic=true", "search.threads=1",
        "search.seed=5", "search.arch_lr=0.1"]


def test_budget_lowers_the_derived_macs_on_a_tiny_search(tmp_path, table_file, table):
    free = run_search(load_config(DartsCnnSearchConfig, None, TINY), tmp_path / "free", progress=False)
    budget = 0.6 * table.genotype_cost(free.genotype)
    constrained = run_search(load_config(DartsCnnSearchConfig, None, TINY + [
        f"search.cost.table={table_file}", f"search.cost.target={int(budget)}", "search.cost.weight=10.0"]),
        tmp_path / "budget", progress=False)
    records = [json.loads(line) for line in (tmp_path / "budget" / "log.jsonl").read_text().splitlines()]
    assert {"expected_macs", "derived_macs", "cost_target"} <= set(records[-1])
    assert records[-1]["derived_macs"] == table.genotype_cost(constrained.genotype)
    assert records[-1]["expected_macs"] < records[0]["expected_macs"]
    assert table.genotype_cost(constrained.genotype) < table.genotype_cost(free.genotype)
