"""Segmentation metrics: a confusion matrix with ignored pixels, per-class IoU and mIoU (exact over DDP ranks)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from nasdeploy.data.segmentation import IGNORE_INDEX
from nasdeploy.utils.distributed import DistContext, broadcast_buffers


class ConfusionMatrix:
    """Accumulates a [classes, classes] confusion matrix (rows: ground truth, columns: prediction)."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted class maps and targets of the same shape."""
        valid = target != self.ignore_index
        t = target[valid].to(torch.int64).cpu()
        p = prediction[valid].to(torch.int64).cpu()
        self.matrix += torch.bincount(t * self.num_classes + p, minlength=self.num_classes**2).view(
            self.num_classes, self.num_classes)

    def all_reduce(self, ctx: DistContext | None) -> None:
        """Sum the matrix over ranks (int64, so exact); a no-op in a single process."""
        if ctx is None or not ctx.distributed:
            return
        total = self.matrix.to(ctx.device)
        dist.all_reduce(total)
        self.matrix = total.cpu()

    def iou(self) -> torch.Tensor:
        """Per-class IoU (NaN for classes absent from both ground truth and predictions)."""
        m = self.matrix.double()
        inter = m.diag()
        union = m.sum(0) + m.sum(1) - inter
        return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))

    def miou(self) -> float:
        """Mean IoU over the classes that occur."""
        iou = self.iou()
        present = ~torch.isnan(iou)
        return float(iou[present].mean()) if present.any() else 0.0

    def pixel_accuracy(self) -> float:
        """Fraction of labelled pixels predicted correctly."""
        total = int(self.matrix.sum())
        return float(self.matrix.diag().sum()) / total if total else 0.0


def confusion_matrix(model: torch.nn.Module, loader: DataLoader, num_classes: int, device: torch.device,
                     ctx: DistContext | None = None) -> ConfusionMatrix:
    """The confusion matrix of `model` (argmax over classes) on `loader`, summed over ranks under DDP.

    Under DDP each rank passes its own shard (ShardSampler) and rank 0's buffers (BN statistics) are
    broadcast first, so every rank evaluates the same model and the sum equals the single-process matrix.
    """
    if ctx is not None:
        broadcast_buffers(model, ctx)
    cm = ConfusionMatrix(num_classes)
    model.eval()
    with torch.no_grad():
        for x, y in loader:
            cm.update(model(x.to(device)).argmax(1).cpu(), y)
    model.train()
    cm.all_reduce(ctx)
    return cm


def evaluate_miou(model: torch.nn.Module, loader: DataLoader, num_classes: int, device: torch.device,
                  ctx: DistContext | None = None) -> dict[str, float]:
    """mIoU and pixel accuracy of `model` on `loader` (with `ctx`: over every rank's shard)."""
    cm = confusion_matrix(model, loader, num_classes, device, ctx)
    return {"miou": cm.miou(), "pixel_acc": cm.pixel_accuracy()}


def majority_class_miou(dataset: Dataset, num_classes: int) -> float:
    """mIoU of predicting the most frequent class everywhere (the baseline a model must beat)."""
    counts = torch.zeros(num_classes, dtype=torch.int64)
    labels = []
    for _, y in dataset:
        labels.append(y)
        valid = y[y != IGNORE_INDEX]
        counts += torch.bincount(valid.flatten(), minlength=num_classes)[:num_classes]
    majority = int(counts.argmax())
    cm = ConfusionMatrix(num_classes)
    for y in labels:
        cm.update(torch.full_like(y, majority), y)
    return cm.miou()
