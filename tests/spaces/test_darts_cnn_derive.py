"""The DARTS derivation rule against hand-built alphas (top-2 edges by best non-'none' weight)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasdeploy.errors import GenotypeError
from nasdeploy.genotypes import CNN_PRIMITIVES, genotype_from_json, genotype_to_json, get_genotype
from nasdeploy.nets import build_network
from nasdeploy.spaces.darts_cnn_derive import derive_genotype

NONE = CNN_PRIMITIVES.index("none")


def alphas_for(cell: tuple[tuple[str, int], ...], steps: int = 4) -> np.ndarray:
    """Logits whose derivation must give `cell`: 'none' dominates every edge but is never chosen."""
    rows = []
    for i in range(steps):
        chosen = {j: op for op, j in cell[2 * i: 2 * i + 2]}
        for j in range(2 + i):
            row = np.zeros(len(CNN_PRIMITIVES))
            row[NONE] = 8.0
            if j in chosen:
                row[CNN_PRIMITIVES.index(chosen[j])] = 3.0
            rows.append(row)
    return np.stack(rows)


@pytest.mark.parametrize("name", ["DARTS_V2", "DARTS_V1"])
def test_recovers_published_genotypes_from_alphas(name):
    g = get_genotype(name)
    derived = derive_genotype(torch.tensor(alphas_for(g.normal)), alphas_for(g.reduce))
    # Pairs within a node come out strongest first; compare per node as sets.
    for cell_d, cell_g in ((derived.normal, g.normal), (derived.reduce, g.reduce)):
        for i in range(4):
            assert set(cell_d[2 * i: 2 * i + 2]) == set(cell_g[2 * i: 2 * i + 2])
    assert derived.normal_concat == derived.reduce_concat == (2, 3, 4, 5)


def test_ties_go_to_lower_indices():
    g = derive_genotype(np.zeros((14, 8)), np.zeros((14, 8)))
    assert g.normal == (("max_pool_3x3", 0), ("max_pool_3x3", 1)) * 4
    assert g.reduce == g.normal


def test_edges_are_ranked_by_softmaxed_weight_not_raw_logits():
    a = np.zeros((2, 8))
    a[0] = [0, 2.0, 0, 0, 0, 0, 0, 0]  # best op weight e^2 / (e^2 + 7) ~ 0.51
    a[1] = [-10, 1.9, -10, -10, -10, -10, -10, -10]  # best op weight ~ 1.0 despite the lower logit
    full = np.zeros((5, 8))
    full[:2] = a
    g = derive_genotype(full, full, steps=2, multiplier=2)
    assert g.normal[:2] == (("max_pool_3x3", 1), ("max_pool_3x3", 0))
    assert g.normal_concat == (2, 3)


def test_none_never_chosen_even_when_it_dominates():
    a = np.full((14, 8), -1.0)
    a[:, NONE] = 50.0
    a[:, CNN_PRIMITIVES.index("sep_conv_3x3")] = 0.0
    g = derive_genotype(a, a)
    assert {op for op, _ in g.normal} == {"sep_conv_3x3"}


def test_derived_genotype_is_registry_compatible():
    rng = np.random.default_rng(0)
    g = derive_genotype(rng.normal(size=(14, 8)), rng.normal(size=(14, 8)))
    again = genotype_from_json(genotype_to_json(g))
    assert again == g
    model = build_network(g, "cifar", channels=8, layers=5, num_classes=10).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("a, match", [
    (np.zeros((13, 8)), "shape"),
    (np.zeros(14), "2-D"),
    (np.full((14, 8), np.nan), "NaN"),
])
def test_bad_alphas_raise_genotype_errors(a, match):
    with pytest.raises(GenotypeError, match=match):
        derive_genotype(a, np.zeros((14, 8)))
