"""Top-1 derivation of recurrent genotypes and recurrent genotype validation."""

from __future__ import annotations


import pytest

from nasdeploy.errors import GenotypeError
from nasdeploy.genotypes import (
    RNN_PRIMITIVES,
    RecurrentGenotype,
    genotype_from_json,
    genotype_to_json,
    get_genotype,
    validate_recurrent_genotype,
)
from nasdeploy.spaces.darts_rnn_derive import derive_recurrent_genotype

NONE, TANH, RELU, SIGMOID, IDENTITY = range(5)


def alphas_for(genes, steps=8, big=4.0, none_boost=None):
    """Logits whose top-1 derivation is `genes`; optionally a larger 'none' logit on other edges."""
    rows, start = [], 0
    for i in range(steps):
        op, pred = genes[i]
        for j in range(i + 1):
            row = [0.0] * 5
            if j == pred:
                row[RNN_PRIMITIVES.index(op)] = big
            elif none_boost is not None:
                row[NONE] = none_boost
            rows.append(row)
        start += i + 1
    return rows


def test_derivation_recovers_the_published_darts_v2_cell():
    target = get_genotype("DARTS_V2_RNN")
    derived = derive_recurrent_genotype(alphas_for(target.recurrent))
    assert derived == target
    assert derived.concat == tuple(range(1, 9))


def test_none_is_excluded_even_when_it_dominates():
    target = get_genotype("DARTS_V1_RNN")
    # Every non-chosen edge has 'none' at a higher logit than any chosen op: it must be ignored.
    derived = derive_recurrent_genotype(alphas_for(target.recurrent, none_boost=10.0))
    assert derived == target
    # An edge whose own best op is 'none' still contributes its best non-none weight.
    rows = [[9.0, 0.0, 3.0, 0.0, 0.0]]  # 1 node: none dominates, relu is the best real op
    assert derive_recurrent_genotype(rows).recurrent == (("relu", 0),)


def test_edges_are_ranked_after_the_row_softmax():
    # Node 2 reads s0 or s1. Raw logits favour edge 0 (5.0 > 3.0), but edge 0 spreads its mass over four
    # ops (softmax ~0.25 each) while edge 1 concentrates it (~0.83): the reference ranks softmaxed weights.
    rows = [
        [0.0, 1.0, 0.0, 0.0, 0.0],  # node 1 <- s0
        [0.0, 5.0, 5.0, 5.0, 5.0],  # node 2 <- s0
        [0.0, 0.0, 0.0, 3.0, 0.0],  # node 2 <- s1
    ]
    assert derive_recurrent_genotype(rows).recurrent == (("tanh", 0), ("sigmoid", 1))


def test_ties_go_to_the_lower_predecessor_then_the_lower_op():
    rows = [[0.0] * 5, [0.0, 1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0, 0.0]]
    assert derive_recurrent_genotype(rows).recurrent == (("tanh", 0), ("tanh", 0))


def test_derivation_accepts_tensors_and_rejects_bad_shapes():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    derived = derive_recurrent_genotype(torch.randn(36, 5))
    assert derived.steps == 8 and all(op != "none" for op, _ in derived.recurrent)
    assert all(0 <= pred <= i for i, (_, pred) in enumerate(derived.recurrent))
    with pytest.raises(GenotypeError, match="not 1 \\+ 2"):
        derive_recurrent_genotype(torch.zeros(35, 5))
    with pytest.raises(GenotypeError, match="5 entries"):
        derive_recurrent_genotype(torch.zeros(36, 4))


def test_derived_genotype_round_trips_through_json():
    derived = derive_recurrent_genotype(alphas_for(get_genotype("DARTS_V2_RNN").recurrent), name="mine")
    back = genotype_from_json(genotype_to_json(derived), expected_kind="rnn_cell")
    assert back == derived and back.name == "mine"


@pytest.mark.parametrize(
    "recurrent, concat, message",
    [
        ((("relu", 1),), (1,), "node 1: predecessor 1 refers to a later or missing node"),
        ((("relu", 0), ("tanh", -1)), (1, 2), "node 2: predecessor -1"),
        ((("none", 0),), (1,), "op 'none' is search-only"),
        ((("sigmod", 0),), (1,), "did you mean 'sigmoid'"),
        ((("relu", 0),), (), "concat list is empty"),
        ((("relu", 0),), (2,), "concat names node 2, which does not exist"),
        ((("relu", 0), ("relu", 1)), (1, 1), "names a node twice"),
        ((), (1,), "has no \\(op, predecessor\\) pairs"),
        ((("relu",),), (1,), "expected an \\[op_name, input_index\\] pair"),
    ],
)
def test_recurrent_genotype_validation_errors(recurrent, concat, message):
    with pytest.raises(GenotypeError, match=message):
        validate_recurrent_genotype(RecurrentGenotype(recurrent, concat))


def test_published_recurrent_genotypes_are_valid_and_named_by_kind():
    for name in ("DARTS_V1_RNN", "DARTS_V2_RNN", "DARTS_RNN"):
        g = get_genotype(name, expected_kind="rnn_cell")
        assert g.steps == 8 and g.concat == tuple(range(1, 9))
