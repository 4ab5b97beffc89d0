"""The pieces of the published training recipes: schedules, drop-path ramp, loss with auxiliary head."""

from __future__ import annotations

import torch
from torch import nn

from nasdeploy.config.darts_cnn import DartsCnnTrainOptions


def make_scheduler(opts: DartsCnnTrainOptions, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine annealing to lr_min over the epochs (CIFAR) or x lr_gamma per epoch (ImageNet)."""
    if opts.lr_schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=opts.lr_gamma)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, opts.epochs, eta_min=opts.lr_min)


def drop_path_at(base: float, epoch: int, epochs: int) -> float:
    """Drop-path probability of 0-based `epoch`: base * epoch / epochs (DARTS ramp)."""
    return base * epoch / epochs


class RecipeLoss(nn.Module):
    """Cross-entropy (optionally label-smoothed) plus auxiliary_weight x the auxiliary head's loss."""

    def __init__(self, auxiliary_weight: float = 0.4, label_smoothing: float = 0.0):
        super().__init__()
        self.auxiliary_weight = auxiliary_weight
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, output: torch.Tensor | tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, main logits) of a network output (logits or (logits, aux_logits))."""
        if isinstance(output, tuple):
            logits, aux = output
            return self.criterion(logits, target) + self.auxiliary_weight * self.criterion(aux, target), logits
        return self.criterion(output, target), output
