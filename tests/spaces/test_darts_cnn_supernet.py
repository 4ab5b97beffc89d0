"""The DARTS CNN supernet: reference sizes, alphas as parameters, one NodeMixer call per node."""

from __future__ import annotations

from types import MappingProxyType

import pytest
import torch

from nasdeploy.errors import ConfigError
from nasdeploy.genotypes import CNN_PRIMITIVES
from nasdeploy.spaces.darts_cnn import DartsCnnSupernet, num_edges
from nasdeploy.spaces import mixer_table
from nasdeploy.spaces.mixing import mix_node_reference


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny kernels: threads only add contention


def test_reference_supernet_parameter_count_and_alpha_shapes():
    model = DartsCnnSupernet()  # C=16, 8 layers, 4 steps, multiplier 4, stem multiplier 3, 10 classes
    weights = sum(p.numel() for p in model.weight_parameters())
    assert weights == 1_930_618  # reference count, alphas not included
    assert model.alphas_normal.shape == model.alphas_reduce.shape == (14, len(CNN_PRIMITIVES))
    assert [i for i, c in enumerate(model.cells) if c.reduction] == [2, 5]


def test_alphas_are_parameters_in_the_state_dict_and_separate_from_weights():
    model = DartsCnnSupernet(channels=4, layers=3, steps=2, multiplier=2)
    state = model.state_dict()
    assert "alphas_normal" in state and "alphas_reduce" in state
    arch = {id(p) for p in model.arch_parameters()}
    weights = {id(p) for p in model.weight_parameters()}
    assert not arch & weights
    assert arch | weights == {id(p) for p in model.parameters()}
    assert all(isinstance(p, torch.nn.Parameter) for p in model.arch_parameters())


def test_alpha_initialisation_options():
    torch.manual_seed(0)
    normal = DartsCnnSupernet(channels=4, layers=3, steps=4)
    values = torch.cat([p.detach().flatten() for p in normal.arch_parameters()])
    assert 5e-4 < values.std().item() < 2e-3 and values.abs().max().item() < 1e-2  # 1e-3 * N(0, 1)
    zeros = DartsCnnSupernet(channels=4, layers=3, steps=4, alpha_init="zeros")
    assert all(torch.count_nonzero(p).item() == 0 for p in zeros.arch_parameters())
    with pytest.raises(ConfigError, match="alpha_init"):
        DartsCnnSupernet(channels=4, layers=3, alpha_init="uniform")


def test_every_node_calls_the_mixer_once_with_all_incoming_edges(monkeypatch):
    calls: list[tuple[int, tuple[int, ...]]] = []

    def spy(inputs, edges, weights):
        calls.append((len(edges), tuple(weights.shape)))
        assert len(inputs) == len(edges) == weights.shape[0]
        return mix_node_reference(inputs, edges, weights)

    monkeypatch.setattr(mixer_table, "MIXERS",
                        MappingProxyType({**mixer_table.MIXERS, "spy_for_test": lambda _recompute_op_bodies: spy}))
    model = DartsCnnSupernet(channels=4, layers=3, steps=3, multiplier=2, mixed_op="spy_for_test")
    assert model.mixed_op == "spy_for_test"
    model(torch.randn(2, 3, 8, 8))
    per_cell = [(2, (2, 8)), (3, (3, 8)), (4, (4, 8))]
    assert calls == per_cell * 3


def test_cell_output_is_the_softmax_weighted_sum_over_the_right_alpha_rows():
    torch.manual_seed(1)
    model = DartsCnnSupernet(channels=4, layers=3, steps=2, multiplier=2, alpha_init_scale=1.0).double()
    model.eval()
    cell = model.cells[0]
    s = torch.randn(2, 12, 8, 8, dtype=torch.float64)
    weights = torch.softmax(model.alphas_normal, dim=-1)
    with torch.no_grad():
        out = cell(s, s, weights)
        states = [cell.preprocess0(s), cell.preprocess1(s)]
        row = 0
        for _ in range(2):
            node = torch.zeros_like(states[0])
            for j, x in enumerate(list(states)):
                edge = cell._ops[row]
                for k, op in enumerate(edge._ops):  # every op, 'none' included (it must add exactly zero)
                    node = node + weights[row, k] * op(x)
                row += 1
            states.append(node)
        expected = torch.cat(states[-2:], dim=1)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_reduction_cells_stride_only_the_input_edges_and_halve_the_map():
    model = DartsCnnSupernet(channels=4, layers=3, steps=4)
    cell = model.cells[1]
    assert cell.reduction
    strides = [edge.stride for edge in cell._ops]
    expected = [2 if j < 2 else 1 for i in range(4) for j in range(2 + i)]
    assert strides == expected and len(strides) == num_edges(4) == 14
    out = cell(torch.randn(2, 12, 8, 8), torch.randn(2, 16, 8, 8), torch.softmax(model.alphas_reduce, -1))
    assert out.shape == (2, 4 * 8, 4, 4)


def test_forward_backward_reaches_alphas_and_weights():
    model = DartsCnnSupernet(channels=4, layers=3, steps=2, multiplier=2, num_classes=5)
    logits = model(torch.randn(2, 3, 16, 16))
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.arch_parameters())
    assert model.genotype().normal_concat == (2, 3)


@pytest.mark.parametrize("kwargs, match", [
    ({"channels": 5}, "even"),
    ({"multiplier": 5, "steps": 4}, "multiplier"),
    ({"layers": 0}, "layers"),
])
def test_bad_sizes_give_one_line_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DartsCnnSupernet(**kwargs)
