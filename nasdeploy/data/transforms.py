"""Image transforms of the DARTS recipes (crop + flip, cutout, ImageNet-style) on torchvision v2.

Every random draw uses torch's global RNG, so restoring torch's RNG state restores augmentation.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torchvision.transforms import v2

from nasdeploy.errors import ConfigError

Transform = Callable[..., torch.Tensor]

AUGMENTS = ("cifar", "imagenet", "none")


def check_normalisation(section: str, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
    """Finite means and finite, positive standard deviations (a zero std divides by zero in every batch)."""
    for k, value in enumerate(mean or ()):
        if not math.isfinite(value):
            raise ConfigError(f"{section}.mean must hold finite numbers, got {list(mean or ())} (value {k + 1})")
    for k, value in enumerate(std or ()):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{section}.std must hold positive numbers (images are divided by it), "
                              f"got {list(std or ())} (value {k + 1})")


class Cutout:
    """Zero a square of side `length` at a uniformly random centre (clipped at borders), as in DARTS."""

    def __init__(self, length: int, prob: float = 1.0):
        if length < 0:
            raise ConfigError(f"cutout length must be >= 0, got {length}")
        if not 0.0 <= prob <= 1.0:
            raise ConfigError(f"cutout probability must be in [0, 1], got {prob}")
        self.length = length
        self.prob = prob

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.length == 0 or (self.prob < 1.0 and torch.rand(()).item() >= self.prob):
            return img
        h, w = img.shape[-2:]
        y = int(torch.randint(h, ()).item())
        x = int(torch.randint(w, ()).item())
        half = self.length // 2
        y0, y1 = max(0, y - half), min(h, y + half)
        x0, x1 = max(0, x - half), min(w, x + half)
        out = img.clone()
        out[..., y0:y1, x0:x1] = 0.0
        return out

    def __repr__(self) -> str:
        return f"Cutout(length={self.length}, prob={self.prob})"


def train_transform(augment: str, image_size: int, mean: Sequence[float], std: Sequence[float],
                    cutout: int = 0, cutout_prob: float = 1.0, native_size: int | None = None) -> Transform:
    """Training transform: 'cifar' (pad-4 crop + flip), 'imagenet' (resized crop, flip, jitter) or 'none'.

    native_size is the stored image size (None when images vary): other sizes are resized first.
    """
    steps: list[Callable[..., torch.Tensor]] = [v2.ToImage()]
    resize = [] if native_size == image_size else [v2.Resize((image_size, image_size), antialias=True)]
    if augment == "cifar":
        steps += resize + [v2.RandomCrop(image_size, padding=4), v2.RandomHorizontalFlip()]
    elif augment == "imagenet":
        steps += [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip(),
                  v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2)]
    elif augment == "none":
        steps += resize
    else:
        raise ConfigError(f"unknown augment '{augment}'; choose one of: {', '.join(AUGMENTS)}")
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if cutout > 0:
        steps.append(Cutout(cutout, cutout_prob))
    return v2.Compose(steps)


def eval_transform(augment: str, image_size: int, mean: Sequence[float], std: Sequence[float],
                   native_size: int | None = None) -> Transform:
    """Evaluation transform: resize (+ centre crop for 'imagenet'), scale, normalise."""
    steps: list[Callable[..., torch.Tensor]] = [v2.ToImage()]
    if augment == "imagenet":
        steps += [v2.Resize(int(round(image_size * 256 / 224)), antialias=True), v2.CenterCrop(image_size)]
    elif native_size != image_size:
        steps += [v2.Resize((image_size, image_size), antialias=True)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)
