"""The DARTS recurrent search space: a cell whose every node mixes all earlier states and all ops.

Node i (1-based) has an edge from each of the states s0..s_{i-1}; on every edge each op k gives
s_j + sigmoid(c) * (act_k(h) - s_j) with [c, h] = s_j W_i, and the node is the alpha-weighted sum
over edges and ops, then BatchNorm without affine. With 8 nodes there are 1 + 2 + ... + 8 = 36
edges, so the architecture weights are a 36 x 5 parameter of the model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from nasdeploy.errors import ConfigError
from nasdeploy.genotypes import RNN_PRIMITIVES
from nasdeploy.nets.darts_rnn import RecurrentCellBase, DartsRnnLanguageModel
from nasdeploy.ops.darts_rnn import highway_update, recurrent_activation


def num_recurrent_edges(steps: int) -> int:
    """Edges of a search cell with `steps` nodes: node i reads s0..s_{i-1}."""
    return steps * (steps + 1) // 2


class DARTSCellSearch(RecurrentCellBase):
    """The search cell: BatchNorm1d(affine=False) on s0 and on each node, all earlier states mixed."""

    def __init__(self, ninp: int, nhid: int, steps: int = 8, dropouth: float = 0.0, dropoutx: float = 0.0,
                 primitives: tuple[str, ...] = RNN_PRIMITIVES, bn_running_stats: bool = False):
        super().__init__(ninp, nhid, steps, dropouth, dropoutx)
        self.primitives = tuple(primitives)
        self._acts = [(k, recurrent_activation(name)) for k, name in enumerate(self.primitives) if name != "none"]
        # Batch statistics in eval mode too by default: with frozen running statistics the normalisation
        # is a fixed affine map inside the recurrence, whose gain can exceed 1 and blow up over a long
        # evaluation stream (observed: inf/NaN validation perplexity on the demo corpus). One BN per
        # state (the reference shares one module across s0 and all nodes).
        self.bns = nn.ModuleList(nn.BatchNorm1d(nhid, affine=False, track_running_stats=bn_running_stats)
                                 for _ in range(steps + 1))

    def nodes(self, s0: torch.Tensor, h_mask: torch.Tensor | None, *, weights: torch.Tensor, **_: Any) -> torch.Tensor:
        """One time step of the mixed cell; weights: softmaxed alphas [num_edges, len(primitives)]."""
        states = self.bns[0](s0).unsqueeze(0)  # [k, B, nhid]: s0 .. s_{k-1}
        ops = [k for k, _ in self._acts]
        offset = 0
        for i in range(self.steps):
            s_in = states if h_mask is None else states * h_mask
            ch = s_in @ self._Ws[i]  # every earlier state through this node's W_i: [i+1, B, 2 nhid]
            w = weights[offset: offset + i + 1, ops]  # [edges, ops], 'none' dropped (it adds zero)
            # sum_k w_k (s + g (act_k(h) - s)) == W (s + g (mix(h) - s)), W = sum_k w_k, mix = sum_k w_k act_k / W:
            # one gated update per edge instead of one per op.
            total = w.sum(dim=1).view(-1, 1, 1)

            def mixed_act(h: torch.Tensor, w: torch.Tensor = w, total: torch.Tensor = total) -> torch.Tensor:
                acts = torch.stack([act(h) for _, act in self._acts], dim=1)  # [edges, ops, B, nhid]
                return torch.einsum("eo,eobh->ebh", w, acts) / total

            node = (total * highway_update(states, ch, mixed_act)).sum(dim=0)
            states = torch.cat([states, self.bns[i + 1](node).unsqueeze(0)], dim=0)
            offset += i + 1
        return states[1:].mean(dim=0)


class DartsRnnSupernet(DartsRnnLanguageModel):
    """The DARTS recurrent supernet: architecture weights `alphas` [36, 5] are a real parameter."""

    def __init__(self, ntokens: int, *, emsize: int = 300, nhid: int = 300, steps: int = 8,
                 dropout: float = 0.75, dropouth: float = 0.25, dropoutx: float = 0.75, dropouti: float = 0.2,
                 dropoute: float = 0.0, alpha_init: str = "normal", alpha_scale: float = 1e-3,
                 primitives: tuple[str, ...] = RNN_PRIMITIVES, bn_running_stats: bool = False):
        if emsize != nhid:
            raise ConfigError(f"tied embedding and decoder need emsize == nhid, got {emsize} and {nhid}")
        if steps < 1:
            raise ConfigError(f"search cell steps must be >= 1, got {steps}")
        if alpha_init not in ("normal", "zeros"):
            raise ConfigError(f"alpha_init must be 'normal' or 'zeros', got {alpha_init!r}")
        cell = DARTSCellSearch(emsize, nhid, steps, dropouth, dropoutx, primitives, bn_running_stats)
        super().__init__(cell, ntokens, dropout=dropout, dropouti=dropouti, dropoute=dropoute)
        self.primitives = tuple(primitives)
        self.steps = steps
        init = torch.zeros(num_recurrent_edges(steps), len(primitives))
        if alpha_init == "normal":
            init = alpha_scale * torch.randn_like(init)
        self.alphas = nn.Parameter(init)

    def init_hidden(self, batch_size: int) -> torch.Tensor:
        """The zero initial state; batch statistics need at least two sequences."""
        if batch_size < 2 and not self.rnns[0].bns[0].track_running_stats:
            raise ConfigError("the search model normalises with batch statistics and needs batch size >= 2")
        return super().init_hidden(batch_size)

    def run_cell(self, emb: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rnns[0](emb, hidden, weights=F.softmax(self.alphas, dim=-1))

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture weights (for the architect's optimiser)."""
        return [self.alphas]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the architecture weights (for the weight optimiser)."""
        return [p for n, p in self.named_parameters() if n != "alphas"]
