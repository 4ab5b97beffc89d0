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

from nasdeploy.spaces.mixing import MixedEdge, NodeMixer


def node_softmax(betas: torch.Tensor, steps: int) -> torch.Tensor:
    """Softmax of per-edge `betas` over each node's incoming edges (node i has 2 + i), concatenated."""
    rows, start = [], 0
    for i in range(steps):
        rows.append(F.softmax(betas[start:start + 2 + i], dim=-1))
        start += 2 + i
    return torch.cat(rows)


def shuffle_concat(partial: torch.Tensor, bypass: torch.Tensor, groups: int) -> torch.Tensor:
    """channel_shuffle(cat([partial, bypass], 1), groups) in one copy: channel i*groups + g of the
    result is channel i of group g of the concatenation (group 0 = partial)."""
    parts = [partial, *bypass.unflatten(1, (groups - 1, partial.shape[1])).unbind(1)]
    return torch.stack(parts, dim=2).flatten(1, 2)


def mix_partial_node(mixer: NodeMixer, inputs: Sequence[torch.Tensor], edges: Sequence[MixedEdge],
                     weights: torch.Tensor, edge_weights: torch.Tensor, groups: int) -> torch.Tensor:
    """sum_e edge_weights[e] * shuffle(cat(mixed op on x_e[:, :C/K], bypass of x_e[:, C/K:])), K = groups."""
    width = inputs[0].shape[1] // groups
    partial = mixer([x[:, :width] for x in inputs], edges, weights * edge_weights[:, None])
    bypass: torch.Tensor | None = None
    for e, (x, edge) in enumerate(zip(inputs, edges)):
        rest = x[:, width:]
        if edge.stride != 1:
            rest = F.max_pool2d(rest, 2, 2)
        term = edge_weights[e] * rest
        bypass = term if bypass is None else bypass + term
    if bypass is None:
        raise ValueError("a node needs at least one edge")
    return shuffle_concat(partial, bypass, groups)
