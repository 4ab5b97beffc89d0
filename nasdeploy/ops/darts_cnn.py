"""DARTS CNN candidate operations, shared by the search supernets and the static networks.

Module attribute names (`op`, `conv_1`, `conv_2`, `bn`) follow the reference implementation's module
tree, so that published checkpoints load with strict=True.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from nasdeploy.genotypes.primitives import CNN_CELL_OPS, CNN_PRIMITIVES


class ReLUConvBN(nn.Module):
    """ReLU -> conv (no bias) -> BN."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class DilConv(nn.Module):
    """ReLU -> dilated depthwise kxk -> pointwise 1x1 -> BN."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int, dilation: int, affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel_size, stride, padding, dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class SepConv(nn.Module):
    """Two stacked [ReLU, depthwise kxk, pointwise 1x1, BN]; only the first is strided."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel_size, stride, padding, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_in, 1, bias=False),
            nn.BatchNorm2d(c_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel_size, 1, padding, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Conv7x1_1x7(nn.Sequential):
    """ReLU -> 1x7 conv (stride (1, s)) -> 7x1 conv (stride (s, 1)) -> BN (AmoebaNet).

    A Sequential itself, not a module wrapping one: the reference builds this op as a bare
    nn.Sequential, so its keys are `_ops.M.1.weight` (no `.op.`) and reference checkpoints load strictly.
    """

    def __init__(self, c: int, stride: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
            nn.Conv2d(c, c, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
            nn.BatchNorm2d(c, affine=affine),
        )


class Identity(nn.Module):
    """Identity (skip connection at stride 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    """The 'none' op: zeros of the output shape (spatially subsampled at stride 2)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """ReLU, two 1x1 stride-2 convs (the second on x shifted by one pixel), concat, BN."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        if c_out % 2 != 0:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        # Pad the shifted input back to full size: identical to the reference on even sizes (the pad
        # row is never sampled) and gives matching branch shapes on odd sizes, with no shape branch.
        shifted = nn.functional.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        a = self.conv_1(x)
        b = self.conv_2(shifted)
        return self.bn(torch.cat([a, b], dim=1))


OpBuilder = Callable[[int, int, bool], nn.Module]

CNN_OPS: dict[str, OpBuilder] = {
    "none": lambda c, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda c, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda c, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda c, stride, affine: Identity() if stride == 1 else FactorizedReduce(c, c, affine=affine),
    "sep_conv_3x3": lambda c, stride, affine: SepConv(c, c, 3, stride, 1, affine=affine),
    "sep_conv_5x5": lambda c, stride, affine: SepConv(c, c, 5, stride, 2, affine=affine),
    "sep_conv_7x7": lambda c, stride, affine: SepConv(c, c, 7, stride, 3, affine=affine),
    "dil_conv_3x3": lambda c, stride, affine: DilConv(c, c, 3, stride, 2, 2, affine=affine),
    "dil_conv_5x5": lambda c, stride, affine: DilConv(c, c, 5, stride, 4, 2, affine=affine),
    "conv_7x1_1x7": lambda c, stride, affine: Conv7x1_1x7(c, stride, affine=affine),
}

assert set(CNN_PRIMITIVES) | set(CNN_CELL_OPS) == set(CNN_OPS), "op registry out of sync with genotype primitives"


def build_op(name: str, channels: int, stride: int, affine: bool = True) -> nn.Module:
    """Build the candidate op `name` on `channels` channels with the given stride."""
    try:
        builder = CNN_OPS[name]
    except KeyError:
        raise KeyError(f"unknown op '{name}' (valid: {', '.join(CNN_OPS)})") from None
    return builder(channels, stride, affine)


def is_identity(op: nn.Module) -> bool:
    """True for the parameter-free identity (drop-path skips it)."""
    return isinstance(op, Identity)
