"""Collapse guards in the DARTS CNN space: the skip cap (exact, with and without a budget), the counts and
warning, DARTS-'s schedule and its auxiliary skip in the supernet."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from nasdeploy.errors import ConfigError
from nasdeploy.genotypes import CNN_PRIMITIVES, get_genotype
from nasdeploy.ops import FactorizedReduce
from nasdeploy.profile import cost_table_build as ctb
from nasdeploy.spaces.cell_knapsack import solve_cell
from nasdeploy.spaces.darts_cnn import DartsCnnSupernet, SearchCell
from nasdeploy.spaces.darts_cnn_budget import DartsCnnCellCosts, derive_genotype_under_budget, genotype_score
from nasdeploy.spaces.darts_cnn_derive import derive_genotype, softmax_rows
from nasdeploy.spaces.darts_cnn_guards import aux_skip_weight, collapse_warning, parameter_free_ops, skip_connections
from nasdeploy.spaces.mixing import mix_node_reference

pytestmark = pytest.mark.usefixtures("one_thread")
SKIP = CNN_PRIMITIVES.index("skip_connect")


def brute_force(scores, costs, counts, columns, budget, cap):
    """Every option sequence in tie-break order; the first best feasible one (or None)."""
    per_node = []
    for s, c, k in zip(scores, costs, counts):
        opts = [(i, j, a, b) for i, j in itertools.combinations(range(s.shape[0]), 2)
                for a, b in itertools.product(columns, columns)]
        per_node.append([(o, s[o[0], o[2]] + s[o[1], o[3]], c[o[0], o[2]] + c[o[1], o[3]], k[o[0], o[2]] + k[o[1], o[3]])
                         for o in opts])
    best = None
    for combo in itertools.product(*per_node):
        score, cost, count = sum(x[1] for x in combo), sum(x[2] for x in combo), sum(x[3] for x in combo)
        if cost <= budget and count <= cap and (best is None or score > best[1]):
            best = ([x[0] for x in combo], score, cost)
    return best


@pytest.mark.parametrize("quantised", [True, False])
def test_count_capped_knapsack_equals_brute_force(quantised):
    rng = np.random.default_rng(11 + quantised)
    columns = [1, 2, 3]  # column 0 plays 'none'
    for _ in range(4):
        shapes = [(2, 4), (3, 4), (2, 4)]
        if quantised:  # many ties in score and cost
            scores = [rng.integers(0, 3, size=s) / 4.0 for s in shapes]
            costs = [rng.integers(0, 3, size=s).astype(float) for s in shapes]
        else:
            scores = [rng.random(s) for s in shapes]
            costs = [rng.integers(0, 100, size=s).astype(float) for s in shapes]
        counts = [np.zeros(s, dtype=int) for s in shapes]
        for k in counts[:2]:  # column 1 counts on the first two nodes (a "normal cell"), not on the third
            k[:, 1] = 1
        scores[0][:, 1] += 0.5  # and scores well, so the cap binds
        hi = sum(float(c.max()) * 2 for c in costs)
        for budget in (np.inf, *rng.uniform(0, hi, size=3)):
            for cap in (0, 1, 2, 3):
                expected = brute_force(scores, costs, counts, columns, budget, cap)
                got = solve_cell(scores, costs, columns, budget, counts, cap)
                if expected is None:
                    assert got is None
                    continue
                assert got is not None and got.cost == expected[2] and got.score == pytest.approx(expected[1], abs=1e-12)
                assert [(*n.inputs, *n.columns) for n in got.nodes] == expected[0]


def skip_heavy_weights(seed, strength=3.0):
    """Alphas whose normal cell favours skip connections everywhere (a collapsed search)."""
    g = torch.Generator().manual_seed(seed)
    normal, reduce = torch.randn(14, 8, generator=g), torch.randn(14, 8, generator=g)
    normal[:, SKIP] += strength
    return normal, reduce


def test_skip_cap_keeps_the_best_genotype_with_at_most_m_skips():
    zero = DartsCnnCellCosts.zeros(4, CNN_PRIMITIVES)
    for seed in range(5):
        a_n, a_r = skip_heavy_weights(seed)
        w_n, w_r = softmax_rows(a_n), softmax_rows(a_r)
        free = derive_genotype(a_n, a_r)
        assert skip_connections(free) > 2  # collapsed
        for cap in (0, 1, 2):
            r = derive_genotype_under_budget(w_n, w_r, zero, np.inf, max_skips=cap)
            assert skip_connections(r.genotype) <= cap and r.capped and not r.binding
            assert r.genotype.reduce == free.reduce  # the cap is on the normal cell only
            assert genotype_score(r.genotype, w_n, w_r) == pytest.approx(r.score, abs=1e-12)
            assert r.score <= genotype_score(free, w_n, w_r)  # optimality itself: the brute-force tests
        # A cap the DARTS rule already meets leaves the genotype alone.
        r = derive_genotype_under_budget(w_n, w_r, zero, np.inf, max_skips=8)
        assert r.genotype == free and not r.capped


def test_skip_cap_equals_brute_force_on_two_node_cells():
    prims = ("none", "skip_connect", "max_pool_3x3", "sep_conv_3x3")
    rng = np.random.default_rng(3)
    for _ in range(3):
        w = [softmax_rows(rng.normal(size=(5, 4))) for _ in range(2)]
        w[0][:, 1] *= 3.0
        c = [rng.integers(0, 40, size=(5, 4)).astype(float) for _ in range(2)]
        costs = DartsCnnCellCosts(c[0], c[1], fixed=10.0)
        for budget in (np.inf, 10.0 + 60.0, 10.0 + 120.0):
            for cap in (0, 1, 2):
                split = [w[0][0:2], w[0][2:5], w[1][0:2], w[1][2:5]]
                csplit = [c[0][0:2], c[0][2:5], c[1][0:2], c[1][2:5]]
                counts = [np.zeros_like(x, dtype=int) for x in split]
                for k in counts[:2]:
                    k[:, 1] = 1
                expected = brute_force(split, csplit, counts, [1, 2, 3], budget - 10.0, cap)
                if expected is None:
                    with pytest.raises(ConfigError, match="skip connection"):
                        derive_genotype_under_budget(*w, costs, budget, prims, steps=2, multiplier=2, max_skips=cap)
                    continue
                r = derive_genotype_under_budget(*w, costs, budget, prims, steps=2, multiplier=2, max_skips=cap)
                assert r.score == pytest.approx(expected[1], abs=1e-12) and r.cost == expected[2] + 10.0
                assert skip_connections(r.genotype) <= cap


def test_skip_cap_and_budget_in_one_derivation():
    table = ctb.build_cost_table("darts_cnn", None, net="cifar", channels=8, layers=5)
    costs = DartsCnnCellCosts.from_table(table)
    a_n, a_r = skip_heavy_weights(7, strength=1.0)
    w_n, w_r = softmax_rows(a_n), softmax_rows(a_r)
    free = derive_genotype_under_budget(w_n, w_r, costs, np.inf)
    budget = 0.8 * free.cost
    budget_only = derive_genotype_under_budget(w_n, w_r, costs, budget)
    both = derive_genotype_under_budget(w_n, w_r, costs, budget, max_skips=1)
    assert both.cost <= budget and skip_connections(both.genotype) <= 1
    assert both.cost == table.genotype_cost(both.genotype)
    assert both.score <= budget_only.score  # the cap can only cost score
    # Too tight a budget for the cap (skip connections cost nothing): the message names the cheapest capped cost.
    cheapest = derive_genotype_under_budget(w_n, w_r, costs, 1.0e12, max_skips=0)
    least = solve_cell([-x for x in _nodes(costs)], _nodes(costs), range(1, 8), np.inf, _normal_skip_counts(), 0)
    with pytest.raises(ConfigError, match=f"at most 0 skip connection.* costs {costs.fixed + least.cost:,.0f} MACs"):
        derive_genotype_under_budget(w_n, w_r, costs, costs.fixed + least.cost - 1, max_skips=0)
    assert cheapest.cost >= costs.fixed + least.cost


def _nodes(costs):
    out = []
    for m in (costs.normal, costs.reduce):
        start = 0
        for i in range(4):
            out.append(m[start:start + 2 + i])
            start += 2 + i
    return out


def _normal_skip_counts():
    counts = []
    for t in range(8):
        k = np.zeros((2 + t % 4, 8), dtype=int)
        if t < 4:
            k[:, SKIP] = 1
        counts.append(k)
    return counts


def test_parameter_free_count_and_warning():
    v1, v2 = get_genotype("DARTS_V1"), get_genotype("DARTS_V2")
    assert (skip_connections(v2), parameter_free_ops(v2)) == (2, 2)
    assert (skip_connections(v1), parameter_free_ops(v1)) == (3, 3)
    assert collapse_warning(v2) is None
    assert "3 parameter-free ops of 8 (skip_connect)" in collapse_warning(v1)
    pooled = dataclasses.replace(v2, normal=(("max_pool_3x3", 0), ("avg_pool_3x3", 1)) + v2.normal[2:])
    assert (skip_connections(pooled), parameter_free_ops(pooled)) == (2, 4)
    assert "4 parameter-free ops of 8 (avg_pool_3x3, max_pool_3x3, skip_connect)" in collapse_warning(pooled)


def test_darts_minus_weight_decays_linearly_to_zero():
    assert [aux_skip_weight(1.0, e, 4) for e in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert aux_skip_weight(2.0, 5, 10) == pytest.approx(1.0)
    assert aux_skip_weight(1.0, 10, 10) == 0.0


def _pair(seed=0):
    torch.manual_seed(seed)
    plain = DartsCnnSupernet(channels=4, num_classes=3, layers=3, mixed_op="reference").double()
    minus = DartsCnnSupernet(channels=4, num_classes=3, layers=3, mixed_op="reference", aux_skip=True).double()
    missing, unexpected = minus.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all("_aux_skips" in k for k in missing)
    return plain, minus


def test_darts_minus_supernet_with_weight_zero_is_the_plain_supernet_in_float64():
    plain, minus = _pair()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for model in (plain, minus):
        model.train()
    out_plain, out_minus = plain(x), minus(x)
    assert torch.equal(out_plain, out_minus)
    g_plain = torch.autograd.grad(out_plain.square().sum(), plain.arch_parameters())
    g_minus = torch.autograd.grad(out_minus.square().sum(), minus.arch_parameters())
    assert all(torch.equal(a, b) for a, b in zip(g_plain, g_minus))
    # A positive weight changes the output; the genotype (no alpha for the auxiliary skip) does not change.
    minus.aux_skip_weight = 0.5
    assert not torch.allclose(minus(x), out_plain)
    assert minus.genotype() == plain.genotype()


@pytest.mark.parametrize("reduction", [False, True])
def test_auxiliary_skip_is_added_outside_the_softmax(reduction):
    """One-node cell: node = mixed op sum + w * (skip(s0) + skip(s1)); skip is FactorizedReduce on stride-2 edges."""
    torch.manual_seed(1)
    from nasdeploy.spaces.mixer_table import get_node_mixer

    _, mixer = get_node_mixer("reference")
    cell = SearchCell(1, 1, 4, 4, 4, reduction, False, CNN_PRIMITIVES, mixer, aux_skip=True).double()
    s0, s1 = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.randn(2, 4, 8, 8, dtype=torch.float64)
    weights = torch.softmax(torch.randn(2, 8, dtype=torch.float64), dim=-1)
    w = 0.3
    got = cell(s0, s1, weights, aux_weight=w)
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    skips = list(cell._aux_skips)
    assert all(isinstance(m, FactorizedReduce) == reduction for m in skips)
    want = mix_node_reference(states, list(cell._ops), weights) + w * (skips[0](states[0]) + skips[1](states[1]))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_darts_minus_refuses_partial_channels():
    with pytest.raises(ConfigError, match="plain DARTS"):
        DartsCnnSupernet(channels=8, num_classes=3, layers=3, partial_channels=2, aux_skip=True)
