"""Untrained weights: give a fresh network realistic BatchNorm statistics so that its parity checks mean something."""

from __future__ import annotations

import torch
from torch import nn

UNTRAINED_NOTE = ("untrained weights: BN running statistics were randomised before export (set from random-input "
                  "batch statistics, then perturbed) so that outputs vary across inputs; this checks the graph, not a model")


def randomize_bn_statistics_(
    model: nn.Module, input_shape: tuple[int, ...], *, seed: int = 0, batches: int = 4, batch_size: int = 8
) -> nn.Module:
    """Give an untrained network's BatchNorms realistic, non-trivial running statistics (in place).

    At initialisation eval-mode BN is the identity and activations shrink cell after cell, so every input
    gives nearly the classifier bias and any graph "passes" parity. Here the statistics are first measured
    on random-normal batches (cumulative average), then perturbed (mean + N(0, 0.1 std), var * U(0.5, 2)).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return model
    gen = torch.Generator().manual_seed(seed)
    saved = [(m, m.momentum) for m in bns]
    was_training = model.training
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the batches below
        model.train()
        with torch.no_grad():
            for _ in range(batches):
                model(torch.randn((batch_size, *input_shape), generator=gen))
            for m in bns:
                std = m.running_var.clamp_min(1e-12).sqrt()
                m.running_mean.add_(torch.randn(m.num_features, generator=gen) * 0.1 * std)
                m.running_var.mul_(torch.rand(m.num_features, generator=gen) * 1.5 + 0.5)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was_training)
    return model
