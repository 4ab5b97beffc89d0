"""The static CNN cell built from one cell of a CNN genotype (any node count, any concat list)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from nasdeploy.ops import FactorizedReduce, ReLUConvBN, build_op, drop_path, is_identity


class StaticCell(nn.Module):
    """A normal or reduction cell: two preprocessed inputs, two ops per node, concat of chosen nodes."""

    def __init__(
        self,
        edges: Sequence[tuple[str, int]],
        concat: Sequence[int],
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
    ):
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(c_prev_prev, channels)
        else:
            self.preprocess0 = ReLUConvBN(c_prev_prev, channels, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(c_prev, channels, 1, 1, 0)
        self._steps = len(edges) // 2
        self._concat = tuple(concat)
        self._indices = tuple(index for _, index in edges)
        self.multiplier = len(concat)
        self._ops = nn.ModuleList(
            build_op(op, channels, 2 if reduction and index < 2 else 1, affine=True) for op, index in edges
        )
        self._drop_mask = tuple(not is_identity(op) for op in self._ops)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        apply_drop = self.training and drop_prob > 0.0
        for i in range(self._steps):
            total = None
            for k in (2 * i, 2 * i + 1):
                h = self._ops[k](states[self._indices[k]])
                if apply_drop and self._drop_mask[k]:
                    h = drop_path(h, drop_prob)
                total = h if total is None else total + h
            states.append(total)
        return torch.cat([states[i] for i in self._concat], dim=1)
