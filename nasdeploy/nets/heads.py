"""Auxiliary classifier heads of the DARTS evaluation networks (used in training only)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class _AuxiliaryHead(nn.Module):
    """Shared forward: features, flatten, classifier; small maps are pooled adaptively to 2x2."""

    min_size: int = 8

    features: nn.Sequential
    classifier: nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.min_size:
            # Smaller maps than the reference size (non-default input sizes): the reference pooling
            # would leave nothing for the 2x2 conv, so pool to the 2x2 grid it would have produced.
            x = F.adaptive_avg_pool2d(self.features[0](x), 2)
            x = self.features[2:](x)
        else:
            x = self.features(x)
        x = x.mean(dim=(2, 3)) if x.shape[-1] * x.shape[-2] > 1 else x.flatten(1)
        return self.classifier(x)


class AuxiliaryHeadCIFAR(_AuxiliaryHead):
    """ReLU, AvgPool 5/3, 1x1 conv 128, BN, ReLU, 2x2 conv 768, BN, ReLU, Linear (8x8 input)."""

    min_size = 8

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(channels, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=False),
        )
        self.classifier = nn.Linear(768, num_classes)


class AuxiliaryHeadImageNet(_AuxiliaryHead):
    """As the CIFAR head but AvgPool stride 2 and no BN after the 2x2 conv (reference convention)."""

    min_size = 7

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False),
            nn.Conv2d(channels, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.ReLU(inplace=False),
        )
        self.classifier = nn.Linear(768, num_classes)
