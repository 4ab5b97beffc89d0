"""Auto-DeepLab budget: the cost table equals the profiler, E[cost] equals the exhaustive expectation, and the
budgeted decode equals brute force over every (cell, path) of tiny lattices."""

from __future__ import annotations

import itertools
from math import comb

import numpy as np
import pytest
import torch

from nasdeploy.errors import ConfigError
from nasdeploy.genotypes.autodeeplab import AUTODEEPLAB_CELL_OPS, AUTODEEPLAB_PRIMITIVES, AUTODEEPLAB_PUBLISHED_COSTS, AUTODEEPLAB, \
    make_autodeeplab_genotype
from nasdeploy.nets.autodeeplab import AutoDeepLabNet
from nasdeploy.profile import model_complexity
from nasdeploy.profile import autodeeplab_cost_table_build as act
from nasdeploy.spaces.autodeeplab_budget import decode_under_budget, genotype_log_score, path_groups
from nasdeploy.spaces.autodeeplab_decode import beta_probabilities, decode_genotype, softmax
from nasdeploy.spaces.cell_knapsack import solve_cell

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors on a shared machine
HEADS = dict(aspp_channels=8, decoder_channels=8, low_level_channels=4)
TINY = act.AutoDeepLabNetSpec(layers=3, blocks=2, filter_multiplier=2, input_size=(18, 23), num_classes=3, **HEADS)


def net_kwargs(spec):
    return dict(filter_multiplier=spec.filter_multiplier, num_classes=spec.num_classes,
                aspp_channels=spec.aspp_channels, decoder_channels=spec.decoder_channels,
                low_level_channels=spec.low_level_channels, separable_heads=spec.separable_heads)


def random_genotype(rng, blocks, layers):
    cell = []
    for i in range(blocks):
        for k in sorted(rng.choice(2 + i, 2, replace=False)):
            cell.append((AUTODEEPLAB_CELL_OPS[rng.integers(len(AUTODEEPLAB_CELL_OPS))], int(k)))
    path, level = [], 0
    for _ in range(layers):
        level = int(np.clip(level + rng.integers(-1, 2), 0, 3))
        path.append(level)
    return make_autodeeplab_genotype(cell, path)


def all_paths(layers):
    def extend(prefix):
        if len(prefix) == layers:
            yield tuple(prefix)
            return
        last = prefix[-1] if prefix else 0
        for level in (last - 1, last, last + 1):
            if 0 <= level < 4:
                yield from extend(prefix + [level])
    return list(extend([]))


def all_cells(blocks):
    per_block = [[((a, i), (b, j)) for i, j in itertools.combinations(range(2 + t), 2)
                  for a, b in itertools.product(AUTODEEPLAB_CELL_OPS, AUTODEEPLAB_CELL_OPS)] for t in range(blocks)]
    for combo in itertools.product(*per_block):
        yield tuple(edge for pair in combo for edge in pair)


@pytest.fixture(scope="module")
def tiny():
    return act.build_autodeeplab_cost_table(TINY)


@pytest.mark.parametrize("spec", [
    act.AutoDeepLabNetSpec(layers=5, blocks=3, filter_multiplier=2, input_size=(32, 48), num_classes=5, **HEADS),
    act.AutoDeepLabNetSpec(layers=6, blocks=2, filter_multiplier=4, input_size=(33, 47), num_classes=3,
                           separable_heads=True, **HEADS),
], ids=["even-size", "odd-size-separable"])
def test_table_cost_is_the_profilers_count(spec):
    table = act.build_autodeeplab_cost_table(spec)
    rng = np.random.default_rng(spec.layers)
    for _ in range(4):
        genotype = random_genotype(rng, spec.blocks, spec.layers)
        net = AutoDeepLabNet(genotype, **net_kwargs(spec))
        assert table.genotype_cost(genotype) == model_complexity(net, (3, *spec.input_size), activations=False).macs


def test_published_network_at_1024x2048_matches_its_recorded_count(tmp_path, monkeypatch):
    spec = act.AutoDeepLabNetSpec()  # Auto-DeepLab-S: F=20, 12 layers, dense heads, 1024x2048
    table = act.build_or_load_autodeeplab_cost_table(spec, cache_dir=tmp_path)
    assert table.genotype_cost(AUTODEEPLAB) == AUTODEEPLAB_PUBLISHED_COSTS["segmentation"]["S"]["macs"]

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(act, "build_autodeeplab_cost_table", fail)
    again = act.build_or_load_autodeeplab_cost_table(spec, cache_dir=tmp_path)
    assert again.genotype_cost(AUTODEEPLAB) == table.genotype_cost(AUTODEEPLAB)
    assert np.array_equal(again.cell_ops, table.cell_ops) and again.levels == table.levels
    (next(tmp_path.iterdir())).write_text("{}")
    with pytest.raises(ConfigError, match="not a nasdeploy autodeeplab cost table"):
        act.load_autodeeplab_cost_table(next(tmp_path.iterdir()))


def test_expected_cost_is_the_exhaustive_expectation(tiny):
    """Paths drawn from beta's Markov chain, each block's two inputs uniformly, ops by softmax over non-'none'."""
    g = torch.Generator().manual_seed(0)
    alphas, betas = torch.randn(5, 8, generator=g).double(), torch.randn(3, 4, 3, generator=g).double()
    p_path = beta_probabilities(betas.numpy())
    p_op = softmax(alphas.numpy()[:, 1:])
    paths = all_paths(3)
    path_prob = []
    for path in paths:
        prob, level = 1.0, 0
        for l, target in enumerate(path):
            prob *= p_path[l, level, target - level + 1]
            level = target
        path_prob.append(prob)
    assert sum(path_prob) == pytest.approx(1.0)
    expected = 0.0
    for cell in all_cells(2):
        prob = 1.0
        for k, (op, source) in enumerate(cell):
            block = k // 2
            prob *= p_op[sum(2 + i for i in range(block)) + source, AUTODEEPLAB_CELL_OPS.index(op)]
        prob /= comb(2, 2) * comb(3, 2)
        expected += prob * sum(pp * tiny.genotype_cost(make_autodeeplab_genotype(cell, path))
                               for pp, path in zip(path_prob, paths))
    assert float(tiny.expected_cost(alphas, betas)) == pytest.approx(expected, rel=1e-10)


def test_expected_cost_gradients_reach_alpha_and_beta(tiny):
    alphas = (1e-3 * torch.randn(5, 8)).requires_grad_()
    betas = (1e-3 * torch.randn(3, 4, 3)).requires_grad_()
    tiny.expected_cost(alphas, betas).backward()
    assert torch.isfinite(alphas.grad).all() and torch.isfinite(betas.grad).all()
    assert alphas.grad[:, 0].abs().max() == 0 and alphas.grad[:, 1:].abs().min() > 0  # 'none' gets no cost gradient
    assert betas.grad[0, 0, 1:].abs().min() > 0  # the first layer's same / coarser moves
    # A step against the gradient lowers the expected cost.
    with torch.no_grad():
        before = float(tiny.expected_cost(alphas, betas))
        after = float(tiny.expected_cost(alphas - 0.1 * alphas.grad.sign(), betas - 0.1 * betas.grad.sign()))
    assert after < before


def brute_force(table, alphas, betas, budget):
    """Best (score, cost, genotype) over every cell x path; a genotype's cost by walking its path."""
    cells = list(all_cells(table.blocks))
    log_w = np.log(softmax(alphas))
    index = [(sum(2 + i for i in range(k // 2)) + src, AUTODEEPLAB_PRIMITIVES.index(op)) for cell in cells
             for k, (op, src) in enumerate(cell)]
    rows, cols = np.array(index).T.reshape(2, len(cells), -1)
    cell_score = log_w[rows, cols].sum(axis=1)
    best = None
    for path in all_paths(table.layers):
        counts, fixed = table.path_counts(path)
        matrix = sum(n * table.cell_ops[k] for k, n in enumerate(counts))
        cost = fixed + matrix[rows, cols].sum(axis=1)
        score = cell_score + _path_log_prob(path, betas)
        ok = cost <= budget
        if ok.any():
            k = int(np.argmax(np.where(ok, score, -np.inf)))
            if best is None or score[k] > best[0]:
                best = (float(score[k]), float(cost[k]), make_autodeeplab_genotype(cells[k], path))
    return best


def log_probabilities(betas):
    with np.errstate(divide="ignore"):  # transitions that do not exist have probability 0
        return np.log(beta_probabilities(betas))


def _path_log_prob(path, betas):
    p = beta_probabilities(betas)
    total, level = 0.0, 0
    for l, target in enumerate(path):
        total += np.log(p[l, level, target - level + 1])
        level = target
    return total


def test_without_a_budget_the_decode_is_todays(tiny):
    rng = np.random.default_rng(0)
    table = act.build_autodeeplab_cost_table(act.AutoDeepLabNetSpec(layers=6, blocks=5, filter_multiplier=2,
                                                                    input_size=(32, 32), **HEADS))
    for seed in range(6):
        alphas, betas = rng.normal(size=(20, 8)) * (1e-3 if seed % 2 else 1.0), rng.normal(size=(6, 4, 3))
        r = decode_under_budget(alphas, betas, table, 1e15)
        assert r.genotype == decode_genotype(alphas, betas, 5) and not r.binding
        assert r.score == pytest.approx(genotype_log_score(r.genotype, alphas, betas), abs=1e-12)


def test_budgeted_decode_equals_brute_force(tiny):
    rng = np.random.default_rng(1)
    cheapest = min(g.fixed for g in path_groups(tiny, log_probabilities(np.zeros((3, 4, 3)))))
    for trial in range(4):
        scale = (0.1, 1.0, 3.0, 1.0)[trial]
        alphas, betas = rng.normal(size=(5, 8)) * scale, rng.normal(size=(3, 4, 3)) * scale
        free = decode_under_budget(alphas, betas, tiny, 1e15)
        for budget in np.linspace(cheapest, free.cost, 5)[:-1]:
            r = decode_under_budget(alphas, betas, tiny, float(budget))
            score, cost, genotype = brute_force(tiny, alphas, betas, budget)
            assert r.genotype == genotype and r.cost == cost <= budget
            assert r.score == pytest.approx(score, abs=1e-9) and r.binding
            assert tiny.genotype_cost(r.genotype) == r.cost
    net = AutoDeepLabNet(r.genotype, **net_kwargs(TINY))
    assert r.cost == model_complexity(net, (3, *TINY.input_size), activations=False).macs


def test_budget_below_the_cheapest_network_names_it(tiny):
    alphas, betas = np.random.default_rng(2).normal(size=(5, 8)), np.random.default_rng(3).normal(size=(3, 4, 3))
    cheapest = min(g.fixed for g in path_groups(tiny, log_probabilities(betas)))  # pools cost no MACs
    assert decode_under_budget(alphas, betas, tiny, cheapest).cost == cheapest
    with pytest.raises(ConfigError, match=f"cheapest cell and path this network allows cost {cheapest:,.0f} MACs"):
        decode_under_budget(alphas, betas, tiny, cheapest - 1)


def test_budgeted_decode_equals_a_knapsack_per_path_on_a_deeper_lattice():
    """6 layers, 5 blocks, an even input size (sizes drift along up moves): grouping, A* order and bounds
    against the plain reference of one exact cell knapsack per path."""
    spec = act.AutoDeepLabNetSpec(layers=6, blocks=5, filter_multiplier=2, input_size=(30, 44), num_classes=3, **HEADS)
    table = act.build_autodeeplab_cost_table(spec)
    rng = np.random.default_rng(4)
    paths = all_paths(6)
    for scale in (0.01, 1.0):
        alphas, betas = rng.normal(size=(20, 8)), rng.normal(size=(6, 4, 3)) * scale
        log_w = np.log(softmax(alphas))
        blocks = [log_w[sum(2 + i for i in range(t)):sum(2 + i for i in range(t + 1))] for t in range(5)]
        free = decode_under_budget(alphas, betas, table, 1e15)
        cheapest = min(table.path_counts(p)[1] for p in paths)
        for budget in (cheapest + 0.3 * (free.cost - cheapest), cheapest + 0.9 * (free.cost - cheapest)):
            best = -np.inf
            for path in paths:
                counts, fixed = table.path_counts(path)
                matrix = table.cell_cost_matrix(counts)
                costs = [matrix[sum(2 + i for i in range(t)):sum(2 + i for i in range(t + 1))] for t in range(5)]
                found = solve_cell(blocks, costs, range(1, 8), budget - fixed)
                if found is not None:
                    best = max(best, found.score + _path_log_prob(path, betas))
            r = decode_under_budget(alphas, betas, table, float(budget))
            assert r.cost <= budget and r.cost == table.genotype_cost(r.genotype)
            assert r.score == pytest.approx(best, abs=1e-9)
            assert r.score == pytest.approx(genotype_log_score(r.genotype, alphas, betas), abs=1e-9)
