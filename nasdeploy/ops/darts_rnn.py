"""Recurrent-cell building blocks shared by the DARTS RNN search cell and the derived (static) cell.

The one recurrence, written once: a node reads a predecessor state s, projects it to [c, h] and
moves towards act(h) through a sigmoid gate,  s' = s + sigmoid(c) * (act(h) - s).  The initial state
s0 is the same update applied to h_prev with act = tanh on the projection of [x, h_prev].
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from nasdeploy.errors import GenotypeError


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


# Op name -> activation applied to the candidate h of a node ("none" is search-only: no function).
RECURRENT_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "identity": _identity,
}


def recurrent_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation of recurrent op `name`."""
    if name not in RECURRENT_ACTIVATIONS:
        raise GenotypeError(f"unknown recurrent op '{name}' (valid ops: {', '.join(RECURRENT_ACTIVATIONS)})")
    return RECURRENT_ACTIVATIONS[name]


def highway_update(s_prev: torch.Tensor, ch: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """s_prev + sigmoid(c) * (act(h) - s_prev), where [c, h] are the two halves of `ch` on the last dim."""
    c, h = ch.chunk(2, dim=-1)
    return s_prev + torch.sigmoid(c) * (act(h) - s_prev)


def variational_mask(like: torch.Tensor, shape: tuple[int, ...], p: float) -> torch.Tensor:
    """A Bernoulli keep-mask scaled by 1/(1-p), drawn once and reused over time (variational dropout)."""
    if p <= 0.0:
        return torch.ones(shape, dtype=like.dtype, device=like.device)
    return like.new_empty(shape).bernoulli_(1.0 - p) / (1.0 - p)


class LockedDropout(nn.Module):
    """Dropout with one mask per sequence, shared by all time steps of a [T, B, F] tensor."""

    def forward(self, x: torch.Tensor, p: float) -> torch.Tensor:
        if not self.training or p <= 0.0:
            return x
        return x * variational_mask(x, (1, x.size(1), x.size(2)), p)


def embedded_dropout(embed: nn.Embedding, words: torch.Tensor, p: float) -> torch.Tensor:
    """Embedding lookup with whole word vectors dropped (same word, same mask within the batch)."""
    if p <= 0.0:
        return embed(words)
    keep = embed.weight.new_empty((embed.weight.size(0), 1)).bernoulli_(1.0 - p) / (1.0 - p)
    return F.embedding(words, embed.weight * keep, embed.padding_idx, embed.max_norm, embed.norm_type,
                       embed.scale_grad_by_freq, embed.sparse)
