"""Partial channels and edge normalisation (PC-DARTS, Xu et al. 2020) around any NodeMixer.

An edge of a PC-DARTS cell runs its candidate ops on the first C/K channels of its input only; the
other channels bypass the ops (max-pooled 2x2 on a stride-2 edge), the two parts are concatenated and
channel-shuffled with K groups. A node is the sum of its edges weighted by the edge-normalisation
weights (a softmax of `betas` over the node's incoming edges). Because the shuffle is a fixed
permutation of channels, the node is computed as one mixer call on the C/K slices (weights scaled
by the edge weights) plus one weighted bypass sum, then concatenated and shuffled once per node.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.nn import functional as F

from nasdeploy.ops.layout import MIN_CPU_CHANNELS_LAST
from nasdeploy.spaces.lean_ops import bypass_max_pool
from nasdeploy.spaces.mixing import MixedEdge, NodeMixer


def node_softmax(betas: torch.Tensor, steps: int) -> torch.Tensor:
    """Softmax of per-edge `betas` over each node's incoming edges (node i has 2 + i), concatenated."""
    rows, start = [], 0
    for i in range(steps):
        rows.append(F.softmax(betas[start:start + 2 + i], dim=-1))
        start += 2 + i
    return torch.cat(rows)


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _head_layout(state: torch.Tensor, width: int, strided: bool) -> torch.memory_format:
    """The layout of the part of a state the ops read: the state's own, except narrow parts on the CPU.

    There the mixer leaves the layout to the caller (ops.layout: oneDNN's channels-last backward of a 1x1
    stride-2 conv corrupts the heap below MIN_CPU_CHANNELS_LAST channels), so a cell without a strided
    edge runs them channels-last (faster depthwise and pointwise backward) and a reduction cell in NCHW.
    """
    if state.device.type == "cpu" and 1 < width < MIN_CPU_CHANNELS_LAST:
        return torch.contiguous_format if strided else torch.channels_last
    return torch.channels_last if _channels_last(state) else torch.contiguous_format


def shuffle_concat(partial: torch.Tensor, bypass: torch.Tensor, groups: int) -> torch.Tensor:
    """channel_shuffle(cat([partial, bypass], 1), groups) in one copy, in partial's memory format:
    channel i*groups + g of the result is channel i of group g of the concatenation (group 0 = partial)."""
    c = partial.shape[1]
    if _channels_last(partial):  # stack along a trailing (N, H, W, C/K, K) axis: the copy lands channels-last
        nhwc = [partial.permute(0, 2, 3, 1), *bypass.permute(0, 2, 3, 1).unflatten(3, (groups - 1, c)).unbind(3)]
        return torch.stack(nhwc, dim=4).flatten(3, 4).permute(0, 3, 1, 2)
    parts = [partial, *bypass.unflatten(1, (groups - 1, c)).unbind(1)]
    return torch.stack(parts, dim=2).flatten(1, 2)


def partial_cell_nodes(mixer: NodeMixer, s0: torch.Tensor, s1: torch.Tensor, edges: Sequence[MixedEdge],
                       weights: torch.Tensor, edge_weights: torch.Tensor, steps: int, groups: int) -> list[torch.Tensor]:
    """The `steps` intermediate nodes of a PC-DARTS cell from its preprocessed inputs s0, s1.

    Node i = sum_e edge_weights[e] * shuffle(cat(mixed op on x_e[:, :C/K], bypass of x_e[:, C/K:])) over
    its 2 + i edges, K = groups. Each state is split once into the part the ops read and the part that
    bypasses them, and a stride-2 bypass (max pool 2x2) is pooled once per cell, not once per edge.
    """
    heads: list[torch.Tensor] = []
    tails: list[torch.Tensor] = []
    relus: list[torch.Tensor | None] = []  # ReLU(head), made once per state by a mixer that needs it
    pooled: dict[int, torch.Tensor] = {}

    strided = any(edge.stride > 1 for edge in edges)

    def add(state: torch.Tensor) -> None:
        width = state.shape[1] // groups
        head, tail = state.split([width, state.shape[1] - width], dim=1)
        # Dense once per state: every op (and every node) reads it as it is.
        heads.append(head.contiguous(memory_format=_head_layout(state, width, strided)))
        tails.append(tail)
        relus.append(None)

    def bypass(j: int, stride: int) -> torch.Tensor:
        if stride == 1:
            return tails[j]
        if j not in pooled:
            pooled[j] = bypass_max_pool(tails[j])
        return pooled[j]

    add(s0)
    add(s1)
    nodes, offset = [], 0
    for _ in range(steps):
        n = len(heads)
        node_edges, w = edges[offset:offset + n], edge_weights[offset:offset + n]
        partial = mixer(heads[:n], node_edges, weights[offset:offset + n] * w[:, None], relus)
        rest = torch.mul(w[0], bypass(0, node_edges[0].stride))
        for j in range(1, n):
            rest = torch.addcmul(rest, w[j], bypass(j, node_edges[j].stride))
        node = shuffle_concat(partial, rest, groups)
        nodes.append(node)
        add(node)
        offset += n
    return nodes
