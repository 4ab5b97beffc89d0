"""Fold inference-mode BatchNorm into the convolution before it, for the ExecuTorch lowering and PT2E paths.

XNNPACK fuses conv + BN itself, so folding first changes no arithmetic beyond float rounding, but it removes
a third of a DARTS graph's nodes: the lowering passes run over fewer nodes, and torchao's convert_pt2e skips
its conv-BN QAT folding (tens of seconds of pattern tracing, measured) when no BatchNorm node is left.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from nasdeploy.ops.darts_cnn import FactorizedReduce


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.running_mean is not None
            and conv.out_channels == bn.num_features)


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d, channels: slice) -> nn.Conv2d:
    """A copy of `conv` whose output equals bn(conv(x)) restricted to bn's `channels` (eval statistics)."""
    fused = copy.deepcopy(conv)
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean[channels], bn.running_var[channels], bn.eps,
        None if bn.weight is None else bn.weight[channels], None if bn.bias is None else bn.bias[channels],
    )
    fused.weight, fused.bias = weight, bias
    return fused


def _fold_sequential(seq: nn.Sequential) -> int:
    count = 0
    for i in range(len(seq) - 1):
        if _foldable(seq[i], seq[i + 1]):
            seq[i] = _fold_into(seq[i], seq[i + 1], slice(None))
            seq[i + 1] = nn.Identity()
            count += 1
    return count


def _fold_factorized_reduce(op: FactorizedReduce) -> int:
    # bn(cat([conv_1(x), conv_2(x')])): the first half of bn's channels belongs to conv_1, the second to conv_2.
    bn = op.bn
    if type(bn) is not nn.BatchNorm2d or bn.running_mean is None:
        return 0
    half = op.conv_1.out_channels
    op.conv_1 = _fold_into(op.conv_1, bn, slice(0, half))
    op.conv_2 = _fold_into(op.conv_2, bn, slice(half, bn.num_features))
    op.bn = nn.Identity()
    return 1


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """An eval-mode copy of `model` with each BatchNorm2d that directly follows a Conv2d folded into it; and the count."""
    folded = copy.deepcopy(model).eval()
    count = 0
    with torch.no_grad():
        for module in list(folded.modules()):
            if isinstance(module, nn.Sequential):
                count += _fold_sequential(module)
            elif isinstance(module, FactorizedReduce):
                count += _fold_factorized_reduce(module)
    return folded, count


def remaining_batchnorms(model: nn.Module) -> int:
    """How many BatchNorm layers a model still has."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
