"""A PC-DARTS forward with recompute_op_bodies (its default on the CPU) keeps fewer bytes for backward than with its
ops' eager bodies: the narrow conv candidates recompute their depthwise convs and ReLU (spaces/lean_ops.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from nasdeploy.genotypes import CNN_PRIMITIVES
from nasdeploy.kernels.build import compiler_available
from nasdeploy.spaces.darts_cnn import DartsCnnSupernet, num_edges
from nasdeploy.spaces.fused_mixer import FusionOptions, make_fused_mixer


def _saved_bytes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    del loss
    return sum(storages.values())


@pytest.mark.skipif(not compiler_available(), reason="needs a C++ compiler and ninja for the fused kernel")
def test_pcdarts_forward_keeps_fewer_bytes_than_the_eager_op_bodies():
    torch.manual_seed(0)
    k = 4
    model = DartsCnnSupernet(channels=16, layers=3, partial_channels=k, mixed_op="fused", recompute_op_bodies=True)
    eager = copy.deepcopy(model)
    mixer = make_fused_mixer(FusionOptions())  # every op body as its modules run it, one ReLU per edge

    def per_edge(inputs, edges, weights, relus=None):
        return mixer(inputs, edges, weights)

    for cell in eager.cells:
        cell.mixer = per_edge
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    outputs: list[torch.Size] = []
    hooks = [cell.register_forward_hook(lambda _m, _i, out: outputs.append(out.shape)) for cell in model.cells]
    lean = _saved_bytes(model, x, y)
    for h in hooks:
        h.remove()
    full = _saved_bytes(eager, x, y)

    # A lower bound of what the lean bodies drop: per SepConv candidate its ReLU and second depthwise outputs, each
    # one node's narrow part (its first depthwise output and the ReLUs shared per state are not counted).
    per_edge_parts = 2 * sum(p.startswith("sep_conv") for p in CNN_PRIMITIVES)
    bound = 0
    for shape in outputs:
        n, c, h, w = shape
        part_bytes = n * (c // model.multiplier // k) * h * w * 4
        bound += num_edges(model.steps) * per_edge_parts * part_bytes
    assert bound > 0
    assert full - lean >= bound, (full, lean, bound)
    # The same network: equal values.
    torch.testing.assert_close(model(x), eager(x), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not compiler_available(), reason="needs a C++ compiler and ninja for the fused kernel")
def test_pcdarts_recomputes_by_default_on_the_cpu_and_plain_darts_does_not():
    """model.recompute_op_bodies left unset (None): on for PC-DARTS's CPU nodes (the memory its benchmark counts on),
    off for plain DARTS and on CUDA tensors (not measured there)."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    auto = FusionOptions(recompute_op_bodies=None)
    assert auto.on_device(cpu).recompute_op_bodies is True and auto.on_device(cuda).recompute_op_bodies is False
    assert FusionOptions(recompute_op_bodies=False).on_device(cpu).recompute_op_bodies is False
    assert DartsCnnSupernet(channels=8, layers=3, partial_channels=1, mixed_op="fused").recompute_op_bodies is False
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    kept = {}
    for setting in (None, True, False):
        torch.manual_seed(0)
        model = DartsCnnSupernet(channels=16, layers=3, partial_channels=4, mixed_op="fused",
                                 recompute_op_bodies=setting)
        kept[setting] = _saved_bytes(model, x, y)
    assert kept[None] == kept[True] < kept[False]
