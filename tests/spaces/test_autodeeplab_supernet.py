"""Auto-DeepLab supernet (Eq. 6 / Eq. 7, beta indexing) and decoding (cell top-2, Viterbi vs brute force)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from nasdeploy.genotypes import AUTODEEPLAB_PRIMITIVES
from nasdeploy.nets import build_network
from nasdeploy.spaces.autodeeplab_decode import (
    beta_probabilities,
    decode_cell,
    decode_genotype,
    path_log_probability,
    viterbi_path,
)
from nasdeploy.config.autodeeplab import AutoDeepLabSupernetConfig
from nasdeploy.spaces.autodeeplab import AutoDeepLabSupernet, outgoing_softmax, transition_mask

TINY = AutoDeepLabSupernetConfig(layers=4, filter_multiplier=2, blocks=2, num_classes=3, stem_channels=4, mixed_op="reference")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny kernels: threads only add contention


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    model = AutoDeepLabSupernet(TINY)
    with torch.no_grad():
        model.betas.normal_(0, 1.0)  # far from uniform, so wrong indexing shows
    return model


def _outgoing_reference(betas: torch.Tensor) -> dict[tuple[int, int], dict[int, float]]:
    """Independent float64 Eq. 7: for each existing node, softmax over the levels it can move to."""
    out = {}
    layers = betas.shape[0]
    for l in range(layers):
        for j in range(min(l, 3) + 1):
            targets = [t for t in (j - 1, j, j + 1) if 0 <= t <= 3]
            logits = [float(betas[l, j, t - j + 1]) for t in targets]
            m = max(logits)
            z = sum(math.exp(v - m) for v in logits)
            out[(l, j)] = {t: math.exp(v - m) / z for t, v in zip(targets, logits)}
    return out


def test_beta_softmax_is_over_outgoing_transitions(supernet):
    p = supernet.beta_weights().detach().double()
    reference = _outgoing_reference(supernet.betas.detach().double())
    for (l, j), probs in reference.items():
        assert math.isclose(float(p[l, j].sum()), 1.0, rel_tol=0, abs_tol=1e-6)  # every node's outgoing sum to 1
        assert len(probs) == (2 if j in (0, 3) else 3)
        for t, value in probs.items():
            assert math.isclose(float(p[l, j, t - j + 1]), value, abs_tol=1e-6)
    # Missing nodes and transitions are exactly zero; incoming probabilities do NOT sum to 1 in general.
    assert p[0, 1:].abs().sum() == 0 and p[:, 0, 0].abs().sum() == 0 and p[:, 3, 2].abs().sum() == 0
    incoming = [float(p[1, 0, 1] + p[1, 1, 0]), float(p[2, 0, 1] + p[2, 1, 0])]
    assert any(abs(s - 1.0) > 1e-3 for s in incoming)


def test_numpy_probabilities_match_torch(supernet):
    betas = supernet.betas.detach()
    np.testing.assert_allclose(beta_probabilities(betas.numpy()), outgoing_softmax(betas, transition_mask(4)).numpy(),
                               atol=1e-6)


def test_eq6_node_is_beta_weighted_sum_of_its_incoming_cells(supernet):
    outputs, inputs = {}, {}
    hooks = []
    for key, cell in supernet.cells.items():
        def hook(module, args, out, key=key):
            outputs[key] = out.detach()
            inputs[key] = args[1].shape[-2:]
        hooks.append(cell.register_forward_hook(hook))
    supernet.eval()
    with torch.no_grad():
        nodes = supernet.forward_nodes(torch.randn(2, 3, 40, 40))
    for h in hooks:
        h.remove()
    p = _outgoing_reference(supernet.betas.detach().double())
    sizes = {j: nodes[(j, j)].shape[-2:] for j in range(4)}
    checked = 0
    for (l, j), value in nodes.items():
        if l == 0:
            continue
        expected = torch.zeros_like(value, dtype=torch.float64)
        for src in (j - 1, j, j + 1):
            key = f"{l}_{j}_{src}"
            if key in outputs:
                expected += p[(l - 1, src)][j] * outputs[key].double()
                assert inputs[key] == sizes[j]  # the transition brought the input to level j's size
                checked += 1
        torch.testing.assert_close(value.double(), expected, atol=1e-5, rtol=1e-5)
    assert checked == len(supernet.cells) == 2 + 5 + 8 + 10  # incoming transitions into layers 1..4


def test_missing_transitions_get_no_gradient_and_arch_grads_are_finite(supernet):
    supernet.train()
    supernet.zero_grad(set_to_none=True)
    out = supernet(torch.randn(2, 3, 32, 32))
    torch.nn.functional.cross_entropy(out, torch.randint(0, 3, (2, 32, 32))).backward()
    g = supernet.betas.grad
    mask = transition_mask(4)
    assert torch.isfinite(g).all() and torch.isfinite(supernet.alphas.grad).all()
    assert g[~mask].abs().sum() == 0 and g[mask].abs().sum() > 0
    arch = {id(p) for p in supernet.arch_parameters()}
    assert arch == {id(supernet.alphas), id(supernet.betas)}
    assert not any(id(p) in arch for p in supernet.weight_parameters())


def _brute_force(probabilities: np.ndarray) -> tuple[tuple[int, ...], float]:
    layers = probabilities.shape[0]
    best, best_score = None, -np.inf
    for path in itertools.product(range(4), repeat=layers):
        score = path_log_probability(path, probabilities)
        if score > best_score:
            best, best_score = path, score
    return best, best_score


@pytest.mark.parametrize("layers", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_viterbi_equals_brute_force(layers, seed):
    rng = np.random.default_rng(seed * 10 + layers)
    probs = beta_probabilities(rng.normal(0, 2.0, size=(layers, 4, 3)))
    path, score = viterbi_path(probs)
    best, best_score = _brute_force(probs)
    assert math.isclose(score, best_score, rel_tol=1e-12, abs_tol=1e-12)
    assert path == best and math.isclose(path_log_probability(path, probs), score, abs_tol=1e-12)


def test_viterbi_is_not_greedy():
    # Greedy takes 0.6 "same" at layer 0 and is stuck with 0.5 * ...; the best path goes coarser first.
    logits = np.full((2, 4, 3), 0.0)
    probs = beta_probabilities(logits)
    probs[0, 0] = [0.0, 0.6, 0.4]
    probs[1, 0] = [0.0, 0.5, 0.5]
    probs[1, 1] = [0.98, 0.01, 0.01]
    assert viterbi_path(probs)[0] == (1, 0)


def test_decode_cell_top2_never_none():
    blocks = 2
    alphas = np.zeros((5, 8))
    none, sep3, atr5, skip = (AUTODEEPLAB_PRIMITIVES.index(n) for n in ("none", "sep_conv_3x3", "atrous_conv_5x5", "skip_connect"))
    alphas[0, none] = 50.0  # dominated by 'none': weak once 'none' is excluded
    alphas[1, sep3] = 3.0
    # block 2 (edges 2..4 read states 0, 1, 2): state 1 is all 'none', so the two kept are states 0 and 2
    alphas[2 + 0, atr5] = 2.5
    alphas[2 + 1, none] = 50.0
    alphas[2 + 2, skip] = 4.0
    cell = decode_cell(alphas, blocks)
    assert cell[:2] == (("max_pool_3x3", 0), ("sep_conv_3x3", 1))  # argmax excluding 'none' (ties: first)
    assert cell[2:] == (("atrous_conv_5x5", 0), ("skip_connect", 2))


def test_decoded_genotype_builds_static_net(supernet):
    g = decode_genotype(supernet.alphas.detach().numpy(), supernet.betas.detach().numpy(), blocks=TINY.blocks, name="tiny")
    assert g.layers == 4 and g.blocks == 2
    model = build_network(g, "segmentation", filter_multiplier=2, num_classes=3, aspp_channels=8,
                          decoder_channels=8, low_level_channels=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 33, 33)).shape == (1, 3, 33, 33)


def test_search_cell_ops_are_the_static_nets_ops(supernet):
    # A known port bug: searching with DARTS's depthwise dil_conv, then deploying dense atrous convs.
    from nasdeploy.nets.autodeeplab import AutoDeepLabCell
    from nasdeploy.ops import AtrousConv
    from nasdeploy.ops.darts_cnn import SepConv

    edge = next(iter(supernet.cells.values())).edges[0]
    assert edge.primitives == AUTODEEPLAB_PRIMITIVES
    by_name = dict(zip(edge.primitives, edge._ops))
    assert isinstance(by_name["atrous_conv_3x3"], AtrousConv) and by_name["atrous_conv_3x3"].conv.groups == 1
    assert isinstance(by_name["sep_conv_5x5"], SepConv)
    static = AutoDeepLabCell((("atrous_conv_3x3", 0), ("sep_conv_5x5", 1)), 4, 4, 4, stride=1)
    assert [type(op) for op in static._ops] == [type(by_name["atrous_conv_3x3"]), type(by_name["sep_conv_5x5"])]
