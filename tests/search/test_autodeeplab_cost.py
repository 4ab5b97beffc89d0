"""The Auto-DeepLab cost term: its config section, the hinge on E[cost](alpha, beta) in the architect, the
table it builds for `table: auto`, the budgeted decode it publishes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from nasdeploy.config.autodeeplab import AutoDeepLabCostOptions, AutoDeepLabSearchConfig, AutoDeepLabSupernetConfig
from nasdeploy.errors import ConfigError
from nasdeploy.profile import autodeeplab_cost_table_build as act
from nasdeploy.search.architect import Architect, ArchitectConfig
from nasdeploy.search.autodeeplab_cost import (
    AutoDeepLabExpectedCost,
    build_autodeeplab_cost,
    cost_table_spec,
    derive_autodeeplab,
)
from nasdeploy.search.autodeeplab_loop import segmentation_loss
from nasdeploy.spaces.autodeeplab import AutoDeepLabSupernet
from nasdeploy.spaces.autodeeplab_budget import decode_under_budget, path_groups
from nasdeploy.spaces.autodeeplab_decode import beta_probabilities, decode_genotype
from nasdeploy.spaces.cell_knapsack import cheapest_cost
from nasdeploy.utils.yamlconfig import from_dict

pytestmark = pytest.mark.usefixtures("one_thread")
SUPERNET = AutoDeepLabSupernetConfig(layers=2, filter_multiplier=2, blocks=2, num_classes=3, stem_channels=4,
                                     mixed_op="reference")
COST = dict(table="auto", input_size=(32, 48), filter_multiplier=2, aspp_channels=8, decoder_channels=8,
            low_level_channels=4)


@pytest.fixture(scope="module")
def table():
    return act.build_autodeeplab_cost_table(cost_table_spec(AutoDeepLabCostOptions(**COST), SUPERNET))


def test_cost_section_is_validated_at_load():
    cfg = from_dict(AutoDeepLabSearchConfig, {"search": {"cost": {"table": "auto", "target": 2e9,
                                                                  "input_size": [512, 1024]}}})
    assert cfg.search.cost.input_size == (512, 1024) and cfg.search.cost.derive == "budget"
    assert from_dict(AutoDeepLabSearchConfig, {}).search.cost is None
    for bad, match in (({"metric": "latency"}, "metric must be one of macs"), ({"input_size": [1]}, "input_size"),
                       ({"filter_multiplier": 0}, "filter_multiplier"), ({"derive": "viterbi"}, "derive"),
                       ({"table": ""}, "table")):
        with pytest.raises(ConfigError, match=match):
            from_dict(AutoDeepLabSearchConfig, {"search": {"cost": {"table": "auto", **bad}}})


def test_the_hinge_on_expected_cost_reaches_alpha_and_beta_in_the_architect(table):
    torch.manual_seed(0)
    model = AutoDeepLabSupernet(SUPERNET).double()
    expected = float(table.expected_cost(model.alphas.detach(), model.betas.detach()))
    options = AutoDeepLabCostOptions(**{**COST, "target": 0.8 * expected, "weight": 3.0})
    cost = AutoDeepLabExpectedCost(table, options, SUPERNET)
    w_opt = torch.optim.SGD(model.weight_parameters(), 0.05)
    batch = (torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.randint(0, 3, (2, 32, 32)))
    plain = Architect(model, segmentation_loss, w_opt, ArchitectConfig()).first_order_grad(batch)
    with_cost = Architect(model, segmentation_loss, w_opt, ArchitectConfig(), cost=cost).first_order_grad(batch)
    a, b = (p.detach().clone().requires_grad_(True) for p in (model.alphas, model.betas))
    hinge = 3.0 * torch.relu(table.expected_cost(a, b) / options.target - 1.0)
    for got, base, want in zip(with_cost, plain, torch.autograd.grad(hinge, [a, b])):
        assert want.abs().max() > 0
        torch.testing.assert_close(got - base, want, rtol=1e-6, atol=1e-12)
    # value: derived takes the unconstrained decode's table cost as the value.
    derived = AutoDeepLabExpectedCost(table, dataclasses.replace(options, value="derived"), SUPERNET)
    free = decode_genotype(a.detach().numpy(), b.detach().numpy(), 2)
    zero = torch.zeros((), dtype=torch.float64)
    want = 3.0 * max(0.0, table.genotype_cost(free) / options.target - 1.0)
    assert float(derived.combine(zero, [a, b]).detach()) == pytest.approx(want, rel=1e-12)


def test_table_must_fit_the_supernet(table):
    with pytest.raises(ConfigError, match="the supernet has 3 layers"):
        AutoDeepLabExpectedCost(table, AutoDeepLabCostOptions(**COST), dataclasses.replace(SUPERNET, layers=3))


def test_auto_table_is_built_once_and_cached(tmp_path, monkeypatch, table):
    monkeypatch.setenv("NASDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    cost = build_autodeeplab_cost(AutoDeepLabCostOptions(**COST), SUPERNET, tmp_path / "run")
    assert cost.table.to_dict() == table.to_dict()
    assert len(list((tmp_path / "cache").rglob("autodeeplab-*.json"))) == 1
    monkeypatch.setattr("nasdeploy.profile.autodeeplab_cost_table_build.build_autodeeplab_cost_table",
                        lambda spec: pytest.fail("rebuilt although cached"))
    assert build_autodeeplab_cost(AutoDeepLabCostOptions(**COST), SUPERNET, tmp_path / "run").table.to_dict() \
        == table.to_dict()
    assert build_autodeeplab_cost(None, SUPERNET, tmp_path / "run") is None


def cheapest(table, betas):
    """The cheapest (cell, path): per group of paths, its fixed cost and the cheapest cell there."""
    with np.errstate(divide="ignore"):
        logp = np.log(beta_probabilities(betas))
    best = np.inf
    for group in path_groups(table, logp):
        matrix = table.cell_cost_matrix(np.asarray(group.counts))
        blocks = [matrix[0:2], matrix[2:5]]
        best = min(best, group.fixed + cheapest_cost(blocks, range(1, len(table.primitives))))
    return best


def test_the_published_genotype_is_the_budgeted_decode(table):
    torch.manual_seed(3)
    model = AutoDeepLabSupernet(SUPERNET)
    with torch.no_grad():
        model.alphas.normal_(0.0, 2.0)
        model.betas.normal_(0.0, 2.0)
    alphas, betas = model.alphas.detach().double().numpy(), model.betas.detach().double().numpy()
    free = decode_genotype(alphas, betas, 2)
    target = (cheapest(table, betas) + table.genotype_cost(free)) / 2
    cost = AutoDeepLabExpectedCost(table, AutoDeepLabCostOptions(**{**COST, "target": target}), SUPERNET)
    derived = derive_autodeeplab(model, cost)
    want = decode_under_budget(alphas, betas, table, target)
    assert derived.genotype == want.genotype and derived.unconstrained == free
    b = derived.budget
    assert b["binding"] and b["derived"] == table.genotype_cost(want.genotype) <= target < b["unconstrained"]
    assert b["expected"] == pytest.approx(float(table.expected_cost(model.alphas.detach(), model.betas.detach())))
    assert derived.log_record()["path"] == list(want.genotype.path)
    plain = derive_autodeeplab(model, AutoDeepLabExpectedCost(
        table, AutoDeepLabCostOptions(**{**COST, "target": target, "derive": "unconstrained"}), SUPERNET))
    assert plain.genotype == free and not plain.budget["binding"] and derive_autodeeplab(model, None).budget is None
