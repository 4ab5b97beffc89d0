"""The pluggable mixed-op interface: how a search cell combines its candidate ops into a node.

A node of a DARTS-style cell is  sum_e sum_k w[e, k] * op_{e,k}(x_e)  over its incoming edges e and
candidate ops k. A NodeMixer computes exactly that from the edge inputs, the MixedEdge modules and the
(already softmaxed) weights, so that an implementation can fuse the whole node (the fused CUDA/CPU
kernels) while the eager reference stays the definition. The implementations are chosen in
nasdeploy.spaces.mixer_table (this module knows none but the reference).
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch
from torch import nn

from nasdeploy.ops import build_op


class NodeMixer(Protocol):
    """mixer(inputs, edges, weights[, relus]) -> the node. `relus`, a list indexed like `inputs` (it may be
    longer) that the caller keeps across the nodes of one cell, lets a mixer that needs ReLU(inputs[e]) make
    it once per state (it fills the empty entries); a mixer may ignore it."""

    def __call__(self, inputs: Sequence[torch.Tensor], edges: Sequence["MixedEdge"], weights: torch.Tensor,
                 relus: list[torch.Tensor | None] | None = None) -> torch.Tensor: ...


OpFactory = Callable[[str, int, int, bool], nn.Module]


class MixedEdge(nn.Module):
    """All candidate ops of one edge, in primitive order (search-time BN without affine; pools get a BN).

    `op_builder(name, channels, stride, affine)` builds each op: the DARTS registry by default; other
    search spaces (Auto-DeepLab's dense atrous convs) pass their own.
    """

    def __init__(self, primitives: Sequence[str], channels: int, stride: int, op_builder: OpFactory = build_op):
        super().__init__()
        self.primitives = tuple(primitives)
        self.stride = stride
        ops = []
        for name in self.primitives:
            op = op_builder(name, channels, stride, False)
            if "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(channels, affine=False))
            ops.append(op)
        self._ops = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The weighted sum of this edge's ops (weights: one row of softmaxed alphas)."""
        return mix_node_reference([x], [self], weights.unsqueeze(0))


def mix_node_reference(inputs: Sequence[torch.Tensor], edges: Sequence[MixedEdge], weights: torch.Tensor,
                       relus: list[torch.Tensor | None] | None = None) -> torch.Tensor:
    """Eager reference: sum over edges and non-'none' ops of weight * op(input) (each op applies its own ReLU:
    `relus` is ignored).

    'none' contributes exactly zero to the value and to every gradient, so it is skipped.
    """
    total: torch.Tensor | None = None
    for e, (x, edge) in enumerate(zip(inputs, edges)):
        for k, (name, op) in enumerate(zip(edge.primitives, edge._ops)):
            if name == "none":
                continue
            term = weights[e, k] * op(x)
            total = term if total is None else total + term
    if total is None:
        raise ValueError("a node needs at least one edge with a non-'none' op")
    return total
