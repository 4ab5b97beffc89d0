"""Classification metrics: top-k correct counts and a running sum meter (DDP-reducible)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from nasdeploy.utils.distributed import DistContext, all_reduce_sum


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1,)) -> list[int]:
    """How many samples have their target among the top-k logits, for each k (k capped at #classes)."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices
    hits = top.eq(target.view(-1, 1))
    return [int(hits[:, : min(k, maxk)].any(dim=1).sum().item()) for k in ks]


@dataclass
class Meter:
    """Sums of loss and correct counts over samples; reduce() sums them over DDP ranks."""

    ks: tuple[int, ...] = (1,)
    loss_sum: float = 0.0
    count: int = 0
    correct: list[int] = field(default_factory=list)

    def update(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch (loss is the batch mean)."""
        n = target.shape[0]
        self.loss_sum += float(loss.detach().item()) * n
        self.count += n
        hits = topk_correct(logits.detach(), target, self.ks)
        self.correct = [a + b for a, b in zip(self.correct, hits)] if self.correct else hits

    def reduce(self, ctx: DistContext) -> dict[str, float]:
        """{'loss', 'top1', ('top5')...} as fractions, summed over ranks."""
        correct = self.correct or [0] * len(self.ks)
        loss_sum, count, *hits = all_reduce_sum([self.loss_sum, self.count, *correct], ctx)
        count = max(count, 1.0)
        out = {"loss": loss_sum / count}
        for k, h in zip(self.ks, hits):
            out[f"top{k}"] = h / count
        return out
