"""The static Auto-DeepLab segmentation network, built from any Auto-DeepLab genotype.

Released-model conventions (DeepLab `nas_network` / `nas_cell`): a three-conv stem (64, 64, 128;
stride 2, 1, 2), one cell per path layer with B * F * 2^level output channels, a down move done by
stride-2 ops inside the cell, an up move by a bilinear (dim - 1) * 2 + 1 resize before it, H^{l-2}
resized to H^{l-1} and projected by a 1x1 conv when its width differs, ReLU after the last cell, ASPP,
and the DeepLabv3+ decoder on the stride-4 feature (the last stride-4 cell on the path, else the stem).
All sizes come from tensor shapes at run time, so one exported graph serves any input size.
ASPP (1x1, three 3x3 at rates 96/s * (1, 2, 3), image pooling; 256 channels) and decoder convs are dense
by default: with them the S/M/L parameter counts equal the published 10.15M / 21.62M / 44.42M.

Training regularisation as in the released model: scheduled drop path on every cell op except skip
(`drop_path_prob` is the current network-wide value, set by the training loop; cell i of n drops with
drop_path_prob * (i + 1) / n), and BatchNorm momentum / epsilon as options (released: decay 0.9997, i.e.
PyTorch momentum 3e-4, and epsilon 1e-3; the defaults here are PyTorch's 0.1 and 1e-5).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import torch
from torch import nn

from nasdeploy.errors import ConfigError, InputSizeError
from nasdeploy.genotypes.autodeeplab import LEVEL_STRIDES, AutoDeepLabGenotype, validate_autodeeplab_genotype
from nasdeploy.nets.factory import NetConfig, register_network
from nasdeploy.nets.seg_heads import ASPP, DeepLabV3PlusDecoder
from nasdeploy.ops import Identity, ReLUConvBN, build_autodeeplab_op, drop_path, resize_bilinear, upsample2
from nasdeploy.utils.checks import check_bn_settings

CITYSCAPES_NUM_CLASSES = 19
_NO_DROP_PATH = ("skip_connect", "none")  # the released cell drops every op but its identity
VARIANT_FILTER_MULTIPLIERS = {"S": 20, "M": 32, "L": 48}


class AutoDeepLabCell(nn.Module):
    """One static cell: 1x1-projected inputs, two ops per block (strided on the cell inputs), concat of all blocks."""

    def __init__(self, edges: Sequence[tuple[str, int]], c_prev_prev: int, c_prev: int, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.preprocess0: nn.Module = (
            Identity() if c_prev_prev == channels else ReLUConvBN(c_prev_prev, channels, 1, 1, 0)
        )
        self.preprocess1 = ReLUConvBN(c_prev, channels, 1, 1, 0)
        self._indices = tuple(index for _, index in edges)
        self._blocks = len(edges) // 2
        self._ops = nn.ModuleList(
            build_autodeeplab_op(op, channels, stride if index < 2 else 1, affine=True) for op, index in edges
        )
        self._drop_mask = tuple(op not in _NO_DROP_PATH for op, _ in edges)
        self.out_channels = self._blocks * channels

    def _branch(self, k: int, states: list[torch.Tensor], drop_prob: float) -> torch.Tensor:
        h = self._ops[k](states[self._indices[k]])
        return drop_path(h, drop_prob) if drop_prob > 0.0 and self._drop_mask[k] else h

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        # Always resizing H^{l-2} to H^{l-1}'s size keeps the graph shape-agnostic; same size is an exact copy.
        s0 = resize_bilinear(s0, (s1.shape[-2], s1.shape[-1]))
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        drop_prob = drop_prob if self.training else 0.0
        for i in range(self._blocks):
            states.append(self._branch(2 * i, states, drop_prob) + self._branch(2 * i + 1, states, drop_prob))
        return torch.cat(states[2:], dim=1)


class AutoDeepLabStem(nn.Module):
    """conv 3x3/2 (64) BN ReLU, conv 3x3 (64) BN, [kept as H^{-1}] ReLU, conv 3x3/2 (128) BN."""

    def __init__(self, channels: Sequence[int] = (64, 64, 128)):
        super().__init__()
        c0, c1, c2 = channels
        self.conv0 = nn.Sequential(nn.Conv2d(3, c0, 3, 2, 1, bias=False), nn.BatchNorm2d(c0), nn.ReLU(inplace=False))
        self.conv1 = nn.Sequential(nn.Conv2d(c0, c1, 3, 1, 1, bias=False), nn.BatchNorm2d(c1))
        self.conv2 = nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(c1, c2, 3, 2, 1, bias=False), nn.BatchNorm2d(c2))
        self.out_channels = (c1, c2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h_prev = self.conv1(self.conv0(x))
        return h_prev, self.conv2(h_prev)


def default_aspp_rates(level: int) -> tuple[int, int, int]:
    """DeepLab's (6, 12, 18) at output stride 16, scaled to the stride of `level`: 96/s * (1, 2, 3)."""
    base = 96 // LEVEL_STRIDES[level]
    return (base, 2 * base, 3 * base)


class AutoDeepLabNet(nn.Module):
    """Auto-DeepLab for semantic segmentation: stem, cells on the decoded path, ASPP, DeepLabv3+ decoder."""

    def __init__(
        self,
        genotype: AutoDeepLabGenotype,
        *,
        filter_multiplier: int = 20,
        num_classes: int = CITYSCAPES_NUM_CLASSES,
        stem_channels: Sequence[int] = (64, 64, 128),
        aspp_channels: int = 256,
        aspp_rates: Sequence[int] | None = None,
        decoder_channels: int = 256,
        low_level_channels: int = 48,
        separable_heads: bool = False,
        dropout: float = 0.1,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
    ):
        super().__init__()
        validate_autodeeplab_genotype(genotype)
        check_bn_settings(bn_momentum, bn_eps)
        for key, value in (("filter_multiplier", filter_multiplier), ("num_classes", num_classes),
                           ("aspp_channels", aspp_channels), ("decoder_channels", decoder_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        self.genotype = genotype
        self.filter_multiplier = filter_multiplier
        self.path = tuple(genotype.path)
        self.stem = AutoDeepLabStem(stem_channels)
        c_prev_prev, c_prev = self.stem.out_channels
        self.cells = nn.ModuleList()
        self._up = []
        level_prev = 0
        for level in self.path:
            stride = 2 if level == level_prev + 1 else 1
            self._up.append(level == level_prev - 1)
            cell = AutoDeepLabCell(genotype.cell, c_prev_prev, c_prev, filter_multiplier * 2**level, stride)
            self.cells.append(cell)
            c_prev_prev, c_prev = c_prev, cell.out_channels
            level_prev = level
        # Decoder feature: the last stride-4 cell on the path (Cell_2 of the released model), else the stem.
        low_cells = [i for i, level in enumerate(self.path) if level == 0]
        self._low_index = low_cells[-1] if low_cells else -1
        c_low = self.cells[self._low_index].out_channels if low_cells else self.stem.out_channels[1]
        rates = tuple(aspp_rates) if aspp_rates is not None else default_aspp_rates(self.path[-1])
        self.aspp = ASPP(c_prev, aspp_channels, rates, separable=separable_heads, dropout=dropout)
        self.decoder = DeepLabV3PlusDecoder(c_low, aspp_channels, num_classes, low_channels=low_level_channels,
                                            channels=decoder_channels, separable=separable_heads)
        self.relu = nn.ReLU(inplace=False)
        self.drop_path_prob = 0.0  # set per step by the training loop (a linear ramp); 0 in evaluation
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum, m.eps = bn_momentum, bn_eps

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise InputSizeError(f"{type(self).__name__} expects input of shape (batch, 3, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < 2:
            raise InputSizeError(f"{type(self).__name__} needs H and W >= 2, got {tuple(x.shape[-2:])}")

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The stem output followed by every cell output along the path (pre-ReLU, as the released end points)."""
        h_prev, h = self.stem(x)
        outputs = [h]
        n = len(self.cells)
        for i, (cell, up) in enumerate(zip(self.cells, self._up)):
            s1 = upsample2(h) if up else h
            # The released schedule: deeper cells drop more, the last one at the full drop_path_prob.
            h_prev, h = h, cell(h_prev, s1, self.drop_path_prob * (i + 1) / n)
            outputs.append(h)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel class logits at the input resolution."""
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            self._check_input(x)
        features = self.forward_features(x)
        low = features[self._low_index + 1]
        logits = self.decoder(self.aspp(self.relu(features[-1])), low)
        return resize_bilinear(logits, (x.shape[-2], x.shape[-1]))


SEGMENTATION_CONFIG = NetConfig(
    name="segmentation",
    genotype_kind="autodeeplab",
    channels=20,  # the filter multiplier F (Auto-DeepLab-S)
    layers=12,
    num_classes=CITYSCAPES_NUM_CLASSES,
    input_size=(3, 1024, 2048),
    mean=(0.5, 0.5, 0.5),  # the released model maps [0, 255] to [-1, 1]
    std=(0.5, 0.5, 0.5),
    # head_channels: the ASPP and decoder width, for the memory estimate checked before a network is built
    extra={"task": "segmentation", "variants": dict(VARIANT_FILTER_MULTIPLIERS), "head_channels": 256},
    stem_stride=4,
    reductions=3,  # levels of stride 4, 8, 16 and 32
)


def _build_segmentation(genotype: AutoDeepLabGenotype, cfg: NetConfig, *, channels: int, layers: int,
                        num_classes: int, filter_multiplier: int | None = None, **kwargs: Any) -> nn.Module:
    multiplier = channels if filter_multiplier is None else filter_multiplier
    # Generic callers (export, profile) say whether they want an auxiliary head; this family has none.
    if kwargs.pop("auxiliary", False):
        raise ConfigError("the segmentation network has no auxiliary head (auxiliary=True is not supported)")
    if layers not in (cfg.layers, genotype.layers):
        raise ConfigError(f"layers={layers} does not match the genotype path ({genotype.layers} layers); the path sets the depth")
    model = AutoDeepLabNet(genotype, filter_multiplier=multiplier, num_classes=num_classes, **kwargs)
    model.default_cfg = replace(cfg, channels=multiplier, layers=genotype.layers, num_classes=num_classes,
                                extra={**cfg.extra, "filter_multiplier": multiplier, "path": list(genotype.path)})
    return model


register_network(SEGMENTATION_CONFIG, _build_segmentation)
