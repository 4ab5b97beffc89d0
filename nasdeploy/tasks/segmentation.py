"""Segmentation metrics: a confusion matrix with ignored pixels, per-class IoU and mIoU (exact over DDP ranks).

Evaluation follows DeepLab: each image is padded at the bottom and right to the next 32k+1 size (Cityscapes
1024x2048 -> 1025x2049) with the normalised mean and the logits are cropped back, which is the same as
padding the labels with ignored pixels. At 32k+1 sizes the networks' (dim - 1) / 2 + 1 resolutions and
align_corners resizes are exact, so the coarse features land on the right pixels of the stride-4 grid.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from nasdeploy.data.segmentation import IGNORE_INDEX
from nasdeploy.errors import ConfigError
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


EVAL_PAD_MULTIPLE = 32  # the deepest stride of the Auto-DeepLab lattice


def padded_size(size: int, multiple: int) -> int:
    """The smallest multiple * k + 1 >= size (size itself when multiple <= 1)."""
    if multiple <= 1:
        return size
    return -(-(size - 1) // multiple) * multiple + 1


def padded_logits(model: torch.nn.Module, x: torch.Tensor, multiple: int = EVAL_PAD_MULTIPLE) -> torch.Tensor:
    """Logits of `x` [N, 3, H, W] computed on x padded (bottom, right) to 32k+1 and cropped back to H x W."""
    h, w = x.shape[-2], x.shape[-1]
    pad_h, pad_w = padded_size(h, multiple) - h, padded_size(w, multiple) - w
    if pad_h or pad_w:
        # Images are normalised as (x - mean) / std (data.segmentation), so the mean pixel is 0.
        x = F.pad(x, (0, pad_w, 0, pad_h), value=0.0)
    return model(x)[..., :h, :w]


def confusion_matrix(model: torch.nn.Module, loader: DataLoader, num_classes: int, device: torch.device,
                     ctx: DistContext | None = None, *, pad_multiple: int = EVAL_PAD_MULTIPLE) -> ConfusionMatrix:
    """The confusion matrix of `model` (argmax over classes) on `loader`, summed over ranks under DDP.

    Inputs are padded to pad_multiple * k + 1 and the logits cropped back (module docstring; 0 or 1: no
    padding). Under DDP each rank passes its own shard (ShardSampler) and rank 0's buffers (BN statistics)
    are broadcast first, so every rank evaluates the same model and the sum equals the single-process matrix.
    """
    if isinstance(pad_multiple, bool) or not isinstance(pad_multiple, int) or pad_multiple < 0:
        raise ConfigError(f"pad_multiple must be an integer >= 0, got {pad_multiple!r}")
    if ctx is not None:
        broadcast_buffers(model, ctx)
    cm = ConfusionMatrix(num_classes)
    model.eval()
    with torch.no_grad():
        for x, y in loader:
            cm.update(padded_logits(model, x.to(device), pad_multiple).argmax(1).cpu(), y)
    model.train()
    cm.all_reduce(ctx)
    return cm


def evaluate_miou(model: torch.nn.Module, loader: DataLoader, num_classes: int, device: torch.device,
                  ctx: DistContext | None = None, *, pad_multiple: int = EVAL_PAD_MULTIPLE) -> dict[str, float]:
    """mIoU and pixel accuracy of `model` on `loader` at 32k+1 padded sizes (with `ctx`: over every rank's shard)."""
    cm = confusion_matrix(model, loader, num_classes, device, ctx, pad_multiple=pad_multiple)
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
