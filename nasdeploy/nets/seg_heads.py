"""Segmentation heads shared by the Auto-DeepLab supernet and static networks: ASPP and the DeepLabv3+ decoder."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from nasdeploy.ops.autodeeplab import resize_bilinear


class ConvBNReLU(nn.Sequential):
    """kxk conv (no bias, optional dilation) -> BN -> ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 1, dilation: int = 1):
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel_size, padding=dilation * (kernel_size - 1) // 2, dilation=dilation, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=False),
        )


class SeparableConvBNReLU(nn.Sequential):
    """DeepLab's split separable conv: depthwise kxk -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, dilation: int = 1):
        super().__init__(
            nn.Conv2d(c_in, c_in, kernel_size, padding=dilation * (kernel_size - 1) // 2, dilation=dilation,
                      groups=c_in, bias=False),
            nn.BatchNorm2d(c_in),
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=False),
        )


class ImagePooling(nn.Module):
    """Global average pool -> 1x1 conv -> BN -> ReLU, broadcast back to the input size."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = ConvBNReLU(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A bilinear resize of a 1x1 map is a broadcast; expand keeps the graph size-agnostic.
        return self.conv(self.pool(x)).expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1 branch, one 3x3 branch per rate, image pooling, 1x1 projection."""

    def __init__(self, c_in: int, c_out: int, rates: Sequence[int], *, separable: bool = True,
                 image_pooling: bool = True, dropout: float = 0.1):
        super().__init__()
        branch = SeparableConvBNReLU if separable else ConvBNReLU
        self.rates = tuple(int(r) for r in rates)
        branches: list[nn.Module] = [ConvBNReLU(c_in, c_out, 1)]
        branches += [branch(c_in, c_out, 3, dilation=r) for r in self.rates]
        if image_pooling:
            branches.append(ImagePooling(c_in, c_out))
        self.branches = nn.ModuleList(branches)
        self.project = ConvBNReLU(len(branches) * c_out, c_out, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.project(torch.cat([b(x) for b in self.branches], dim=1)))


class DeepLabV3PlusDecoder(nn.Module):
    """Project the stride-4 feature to 48 channels, concat the resized ASPP output, two 3x3 convs, logits."""

    def __init__(self, c_low: int, c_aspp: int, num_classes: int, *, low_channels: int = 48,
                 channels: int = 256, separable: bool = True):
        super().__init__()
        branch = SeparableConvBNReLU if separable else ConvBNReLU
        self.project_low = ConvBNReLU(c_low, low_channels, 1)
        self.fuse = nn.Sequential(branch(c_aspp + low_channels, channels, 3), branch(channels, channels, 3))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, aspp: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        low = self.project_low(low)
        aspp = resize_bilinear(aspp, (low.shape[-2], low.shape[-1]))
        return self.classifier(self.fuse(torch.cat([aspp, low], dim=1)))
