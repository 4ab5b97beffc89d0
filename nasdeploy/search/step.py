"""One DARTS search step and its loss, with torch alone (no data pipeline), for the loop and the benchmarks."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from nasdeploy.search.architect import Architect

Batch = tuple[torch.Tensor, torch.Tensor]


def classification_loss(forward: Callable[..., torch.Tensor], batch: Batch) -> torch.Tensor:
    """Cross-entropy of a forward callable on an (images, labels) batch (the architect's loss_fn)."""
    x, y = batch
    return F.cross_entropy(forward(x), y)


def search_step(model: nn.Module, architect: Architect, weight_optimizer: torch.optim.Optimizer,
                weight_params: list[nn.Parameter], train_batch: Batch, arch_batch: Batch, lr: float,
                grad_clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One DARTS step: the architecture step on `arch_batch`, then the weight step (clipped) on `train_batch`.

    Returns the weight step's (loss, logits).
    """
    architect.step(train_batch, arch_batch, eta=lr)
    x, y = train_batch
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    weight_optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(weight_params, grad_clip)
    weight_optimizer.step()
    for p in architect.arch_params:  # the weight step's alpha gradients are not used
        p.grad = None
    return loss.detach(), logits.detach()
