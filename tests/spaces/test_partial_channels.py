"""The PC-DARTS supernet (partial_channels K > 1): betas as parameters, partial ops, shuffle, architect steps."""

from __future__ import annotations

from types import MappingProxyType

import pytest
import torch
from torch.nn import functional as F

from nasdeploy.errors import ConfigError
from nasdeploy.kernels.build import compiler_available
from nasdeploy.search.architect import Architect, ArchitectConfig
from nasdeploy.search.step import classification_loss
from nasdeploy.spaces import mixer_table
from nasdeploy.spaces.darts_cnn import DartsCnnSupernet, num_edges
from nasdeploy.spaces.mixing import mix_node_reference
from nasdeploy.spaces.partial_channels import node_softmax, shuffle_concat

pytestmark = pytest.mark.usefixtures("one_thread")
MIXERS = ["reference", pytest.param("fused", marks=pytest.mark.skipif(not compiler_available(),
                                                                     reason="no C++ compiler for the fused kernels"))]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """The textbook channel shuffle (ShuffleNet): reshape to groups, transpose, flatten."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def test_betas_are_parameters_in_the_state_dict_only_with_partial_channels():
    plain = DartsCnnSupernet(channels=8, layers=3, steps=2, multiplier=2)
    assert plain.betas_normal is None and len(plain.arch_parameters()) == 2
    assert not [k for k in plain.state_dict() if k.startswith("betas_")]
    pc = DartsCnnSupernet(channels=8, layers=3, steps=2, multiplier=2, partial_channels=4)
    state = pc.state_dict()
    assert state["betas_normal"].shape == state["betas_reduce"].shape == (num_edges(2),)
    arch = {id(p) for p in pc.arch_parameters()}
    weights = {id(p) for p in pc.weight_parameters()}
    assert len(arch) == 4 and not arch & weights and arch | weights == {id(p) for p in pc.parameters()}
    assert [p for p in pc.arch_parameters()][2:] == [pc.betas_normal, pc.betas_reduce]


def test_partial_channels_one_is_plain_darts_bit_for_bit():
    torch.manual_seed(3)
    a = DartsCnnSupernet(channels=4, layers=3, steps=2, multiplier=2, mixed_op="reference")
    torch.manual_seed(3)
    b = DartsCnnSupernet(channels=4, layers=3, steps=2, multiplier=2, mixed_op="reference", partial_channels=1)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(a(x), b(x))


def test_ops_run_on_a_quarter_of_the_channels():
    model = DartsCnnSupernet(channels=16, layers=3, steps=2, multiplier=2, partial_channels=4)
    widths = [{edge._ops[4].op[1].in_channels for edge in cell._ops} for cell in model.cells]
    assert widths == [{4}, {8}, {16}]  # sep_conv_3x3's depthwise conv: C/4, 2C/4, 4C/4 (cells 1, 2 reduce)


def test_shuffle_concat_is_channel_shuffle_of_the_concatenation():
    partial, bypass = torch.randn(2, 3, 4, 5), torch.randn(2, 9, 4, 5)
    torch.testing.assert_close(shuffle_concat(partial, bypass, 4), channel_shuffle(torch.cat([partial, bypass], 1), 4),
                               rtol=0, atol=0)


def test_shuffle_concat_keeps_channels_last_and_the_same_values():
    partial = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    bypass = torch.randn(2, 9, 4, 5).contiguous(memory_format=torch.channels_last)
    out = shuffle_concat(partial, bypass, 4)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    torch.testing.assert_close(out, channel_shuffle(torch.cat([partial, bypass], 1), 4), rtol=0, atol=0)


@pytest.mark.skipif(not compiler_available(), reason="no C++ compiler for the fused kernels")
def test_narrow_strided_nodes_reach_the_kernel_in_nchw(monkeypatch):
    """Channels-last states (from stride-1 nodes) must not carry a 2-7 channel stride-2 node into
    oneDNN's channels-last 1x1 strided conv backward (a heap bug on some CPUs, see nasdeploy.ops.layout)."""
    from nasdeploy.spaces import fused_mixer

    seen: list[tuple[int, bool, bool]] = []
    real = fused_mixer.mixed_node

    def spy(xs, strides, zs, *args):
        seen.append((xs[0].shape[1], max(strides) > 1, all(x.is_contiguous() for x in xs)))
        return real(xs, strides, zs, *args)

    monkeypatch.setattr(fused_mixer, "mixed_node", spy)
    model = DartsCnnSupernet(channels=8, layers=3, steps=2, multiplier=2, partial_channels=4, mixed_op="fused")
    F.cross_entropy(model(torch.randn(2, 3, 8, 8)), torch.tensor([0, 1])).backward()
    assert (2, False, False) in seen  # narrow stride-1 nodes run channels-last ...
    assert all(nchw for c, strided, nchw in seen if strided and c < 8)  # ... narrow strided ones in NCHW
    assert any(strided and c < 8 for c, strided, _ in seen)


def test_node_softmax_normalises_each_nodes_incoming_edges():
    betas = torch.randn(num_edges(3))
    w = node_softmax(betas, 3)
    sums = [w[0:2].sum(), w[2:5].sum(), w[5:9].sum()]
    torch.testing.assert_close(torch.stack(sums), torch.ones(3, dtype=w.dtype))
    torch.testing.assert_close(w[2:5], F.softmax(betas[2:5], dim=0))


def pc_darts_edge(edge, x, weights, groups):
    """One PC-DARTS mixed edge as the paper describes it, edge by edge (independent of the node fusion)."""
    width = x.shape[1] // groups
    part, rest = x[:, :width], x[:, width:]
    mixed = sum(w * op(part) for w, op in zip(weights, edge._ops))
    if edge.stride != 1:
        rest = F.max_pool2d(rest, 2, 2)
    return channel_shuffle(torch.cat([mixed, rest], 1), groups)


@pytest.mark.parametrize("mixed_op", MIXERS)
@pytest.mark.parametrize("groups", [2, 4])
def test_cell_equals_the_edge_by_edge_definition(mixed_op, groups):
    torch.manual_seed(1)
    model = DartsCnnSupernet(channels=8, layers=3, steps=3, multiplier=2, partial_channels=groups, mixed_op=mixed_op,
                          alpha_init_scale=1.0).double()
    for cell in model.cells:
        alphas = model.alphas_reduce if cell.reduction else model.alphas_normal
        betas = model.betas_reduce if cell.reduction else model.betas_normal
        weights, edge_weights = F.softmax(alphas, dim=-1), node_softmax(betas, 3)
        factorized = hasattr(cell.preprocess0, "conv_1")  # FactorizedReduce after a reduction cell
        c0 = cell.preprocess0.conv_1.in_channels if factorized else cell.preprocess0.op[1].in_channels
        s0 = torch.randn(2, c0, 16 if factorized else 8, 16 if factorized else 8, dtype=torch.float64)
        s1 = torch.randn(2, cell.preprocess1.op[1].in_channels, 8, 8, dtype=torch.float64)
        with torch.no_grad():
            out = cell(s0, s1, weights, edge_weights)
            states = [cell.preprocess0(s0), cell.preprocess1(s1)]
            row = 0
            for _ in range(3):
                node = 0
                for x in list(states):
                    node = node + edge_weights[row] * pc_darts_edge(cell._ops[row], x, weights[row], groups)
                    row += 1
                states.append(node)
            expected = torch.cat(states[-2:], dim=1)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


def test_the_mixer_gets_the_partial_channels_once_per_node(monkeypatch):
    calls: list[tuple[int, ...]] = []

    def spy(inputs, edges, weights, relus=None):
        calls.append(tuple(x.shape[1] for x in inputs))
        return mix_node_reference(inputs, edges, weights)

    monkeypatch.setattr(mixer_table, "MIXERS",
                        MappingProxyType({**mixer_table.MIXERS, "spy_for_test": lambda _recompute_op_bodies: spy}))
    model = DartsCnnSupernet(channels=8, layers=3, steps=2, multiplier=2, partial_channels=4, mixed_op="spy_for_test")
    model(torch.randn(2, 3, 8, 8))
    assert calls == [(2, 2), (2, 2, 2), (4, 4), (4, 4, 4), (8, 8), (8, 8, 8)]  # C, 2C, 4C over K = 4


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_partial_channels_must_be_a_positive_integer(bad):
    with pytest.raises(ConfigError, match="partial_channels must be an integer >= 1"):
        DartsCnnSupernet(channels=8, layers=3, partial_channels=bad)


def test_channels_must_be_divisible_by_partial_channels():
    with pytest.raises(ConfigError, match=r"channels \(6\) must be divisible by partial_channels \(4\)"):
        DartsCnnSupernet(channels=6, layers=3, partial_channels=4)


@pytest.mark.parametrize("mixed_op", MIXERS)
@pytest.mark.parametrize("order", ["first", "second"])
def test_architect_steps_update_alphas_and_betas(mixed_op, order):
    torch.manual_seed(0)
    model = DartsCnnSupernet(channels=8, layers=3, steps=2, multiplier=2, num_classes=3, partial_channels=4,
                          mixed_op=mixed_op)
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.1, momentum=0.9)
    architect = Architect(model, classification_loss, w_opt, ArchitectConfig(order=order, lr=0.01))
    assert [id(p) for p in architect.arch_params] == [id(p) for p in model.arch_parameters()]
    batch = (torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,)))
    before = [p.detach().clone() for p in model.arch_parameters()]
    grads = architect.first_order_grad(batch) if order == "first" else architect.second_order_grad(batch, batch, 0.1)
    assert all(g.abs().max() > 0 for g in grads)
    architect.step(batch, batch, 0.1)
    moved = [not torch.equal(a, p.detach()) for a, p in zip(before, model.arch_parameters())]
    assert moved == [True, True, True, True]  # alphas_normal, alphas_reduce, betas_normal, betas_reduce


def test_genotype_uses_the_betas():
    torch.manual_seed(0)
    model = DartsCnnSupernet(channels=8, layers=3, steps=2, multiplier=2, partial_channels=2, alpha_init_scale=1.0)
    with torch.no_grad():
        model.alphas_normal.zero_()
        model.alphas_normal[:, 4] = 1.0  # every edge's best op is sep_conv_3x3, all edges equally strong
        model.betas_normal.copy_(torch.tensor([0.0, 0.0, -5.0, 3.0, 2.0]))  # node 1: edges from 1 and 2 win
    normal = model.genotype().normal
    assert [j for _, j in normal[2:]] == [1, 2]
    with torch.no_grad():
        model.betas_normal.copy_(torch.tensor([0.0, 0.0, 3.0, 2.0, -5.0]))
    assert [j for _, j in model.genotype().normal[2:]] == [0, 1]


@pytest.mark.skipif(not compiler_available(), reason="no C++ compiler for the fused kernels")
def test_a_narrow_factorized_reduce_preprocess_gets_nchw_input():
    """PC-DARTS runs narrow ops parts of normal cells channels-last, so a cell output can be channels-last: a
    2-7 channel FactorizedReduce preprocess after it must still get NCHW on the CPU (nasdeploy.ops.layout)."""
    model = DartsCnnSupernet(channels=4, layers=3, steps=2, multiplier=1, partial_channels=2, mixed_op="fused")
    cell = model.cells[2]
    assert cell.preprocess0.conv_1.in_channels == 4  # cell 0's output: 1 node of 4 channels
    seen: list[bool] = []
    cell.preprocess0.register_forward_hook(lambda m, args, out: seen.append(args[0].is_contiguous()))
    model.cells[0].register_forward_hook(lambda m, args, out: seen.append(out.is_contiguous()))
    model(torch.randn(2, 3, 8, 8))
    assert seen == [False, True]  # cell 0's output is channels-last, the FactorizedReduce input NCHW


@pytest.mark.cuda
def test_cuda_fused_pc_darts_matches_the_reference_path():
    """The fused kernel on the C/K channel slices on the GPU: forward, alpha and beta gradients (float64)."""
    grads, logits = [], []
    x, y = torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (4,))
    for mixed_op in ("reference", "fused"):
        torch.manual_seed(0)
        model = DartsCnnSupernet(channels=16, layers=5, partial_channels=4, mixed_op=mixed_op, alpha_init_scale=0.5)
        model = model.double().cuda()
        loss = F.cross_entropy(model(x.cuda()), y.cuda())
        logits.append(loss.detach())
        grads.append(torch.autograd.grad(loss, model.arch_parameters()))
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-10, atol=1e-12)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_narrow_ops_parts_run_channels_last_only_in_cells_without_a_strided_edge():
    """PC-DARTS hands the mixer narrow (C/K < 8) parts: channels-last in normal cells (faster), NCHW in reduction
    cells, whose 1x1 stride-2 convs hit oneDNN's channels-last heap bug (nasdeploy.ops.layout)."""
    from nasdeploy.spaces.mixing import MixedEdge
    from nasdeploy.spaces.partial_channels import partial_cell_nodes

    seen: list[tuple[bool, ...]] = []

    def spy(inputs, edges, weights):
        seen.append(tuple(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() for x in inputs))

    for stride in (1, 2):
        seen.clear()
        edges = [MixedEdge(("skip_connect",), 4, stride if j < 2 else 1) for i in range(2) for j in range(2 + i)]
        s0 = torch.randn(2, 16, 8, 8)

        def mixer(inputs, e, w, relus=None, size=8 // stride):
            spy(inputs, e, w)
            return torch.zeros(2, 4, size, size)

        partial_cell_nodes(mixer, s0, s0.clone(), edges, torch.ones(5, 1), torch.ones(5), steps=2, groups=4)
        assert seen and all(all(flags) == (stride == 1) and (any(flags) == (stride == 1)) for flags in seen), seen
