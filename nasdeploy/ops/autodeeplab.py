"""Auto-DeepLab candidate operations and resize helpers, following the released model's conventions.

Differences from the DARTS ops: "atrous_conv_kxk" is a DENSE kxk conv with rate 2 (at stride 2 the
released cell resizes bilinearly to half size and applies the conv at rate 1), and a strided
skip_connect is ReLU -> 1x1 stride-2 conv -> BN. Separable convs are the DARTS SepConv (two stacked
[ReLU, depthwise, pointwise, BN]), which is exactly the released "separable_kxk_2".
Bilinear resizes use align_corners=True with output size (dim - 1) * scale + 1.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nasdeploy.genotypes.autodeeplab import AUTODEEPLAB_PRIMITIVES
from nasdeploy.ops.darts_cnn import Identity, SepConv, Zero


def resize_bilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize with align_corners=True (exact identity when the size does not change)."""
    return F.interpolate(x, size=(size[0], size[1]), mode="bilinear", align_corners=True)


def upsample2(x: torch.Tensor) -> torch.Tensor:
    """Double the resolution the released way: (dim - 1) * 2 + 1 (41 -> 81)."""
    h, w = x.shape[-2], x.shape[-1]
    return resize_bilinear(x, ((h - 1) * 2 + 1, (w - 1) * 2 + 1))


def downsample2(x: torch.Tensor) -> torch.Tensor:
    """Halve the resolution the released way: (dim - 1) // 2 + 1 (81 -> 41), the size of a stride-2 conv."""
    h, w = x.shape[-2], x.shape[-1]
    return resize_bilinear(x, ((h - 1) // 2 + 1, (w - 1) // 2 + 1))


class AtrousConv(nn.Module):
    """ReLU -> dense kxk conv with rate 2 -> BN; at stride 2: ReLU -> bilinear half size -> kxk conv rate 1 -> BN."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, affine: bool = True):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"AtrousConv supports stride 1 or 2, got {stride}")
        self.stride = stride
        rate = 2 if stride == 1 else 1
        self.relu = nn.ReLU(inplace=False)
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, padding=rate * (kernel_size - 1) // 2, dilation=rate, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        if self.stride == 2:
            x = downsample2(x)
        return self.bn(self.conv(x))


class StridedSkip(nn.Module):
    """ReLU -> 1x1 conv with stride -> BN (the released cell's strided identity)."""

    def __init__(self, c_in: int, c_out: int, stride: int, affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


OpBuilder = Callable[[int, int, bool], nn.Module]

AUTODEEPLAB_OPS: dict[str, OpBuilder] = {
    "none": lambda c, stride, affine: Zero(stride),
    "max_pool_3x3": lambda c, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "avg_pool_3x3": lambda c, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "skip_connect": lambda c, stride, affine: Identity() if stride == 1 else StridedSkip(c, c, stride, affine=affine),
    "sep_conv_3x3": lambda c, stride, affine: SepConv(c, c, 3, stride, 1, affine=affine),
    "sep_conv_5x5": lambda c, stride, affine: SepConv(c, c, 5, stride, 2, affine=affine),
    "atrous_conv_3x3": lambda c, stride, affine: AtrousConv(c, c, 3, stride, affine=affine),
    "atrous_conv_5x5": lambda c, stride, affine: AtrousConv(c, c, 5, stride, affine=affine),
}

assert tuple(AUTODEEPLAB_OPS) == AUTODEEPLAB_PRIMITIVES, "Auto-DeepLab op registry out of sync with its primitives"


def build_autodeeplab_op(name: str, channels: int, stride: int, affine: bool = True) -> nn.Module:
    """Build the Auto-DeepLab candidate op `name` on `channels` channels with the given stride."""
    try:
        builder = AUTODEEPLAB_OPS[name]
    except KeyError:
        raise KeyError(f"unknown Auto-DeepLab op '{name}' (valid: {', '.join(AUTODEEPLAB_OPS)})") from None
    return builder(channels, stride, affine)
