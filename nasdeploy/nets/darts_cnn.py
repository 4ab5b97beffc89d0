"""NetworkCIFAR and NetworkImageNet: the DARTS evaluation networks, built from any CNN genotype.

Module names and shapes follow the reference module tree (stem / stem0 / stem1, cells.N.preprocess0,
cells.N._ops.M, auxiliary_head, classifier) so that published DARTS checkpoints load with strict=True.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import nn

from nasdeploy.errors import InputSizeError
from nasdeploy.genotypes import CNNGenotype, validate_cnn_genotype
from nasdeploy.nets.cnn_cell import StaticCell
from nasdeploy.nets.heads import AuxiliaryHeadCIFAR, AuxiliaryHeadImageNet

NetOutput = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]


def reduction_indices(layers: int) -> tuple[int, int]:
    """Indices of the two reduction cells: layers//3 and 2*layers//3."""
    return layers // 3, 2 * layers // 3


class _DartsNetwork(nn.Module):
    """Shared cell stacking and forward of the two evaluation networks."""

    auxiliary_head: nn.Module | None
    min_input_size: int = 1

    def _build_cells(
        self, genotype: CNNGenotype, channels: int, layers: int, c_stem: int, reduction_prev: bool
    ) -> int:
        c_prev_prev, c_prev, c_curr = c_stem, c_stem, channels
        self.cells = nn.ModuleList()
        self._aux_index = 2 * layers // 3
        self._aux_channels = 0
        for i in range(layers):
            reduction = i in reduction_indices(layers)
            if reduction:
                c_curr *= 2
            edges, concat = (genotype.reduce, genotype.reduce_concat) if reduction else (genotype.normal, genotype.normal_concat)
            cell = StaticCell(edges, concat, c_prev_prev, c_prev, c_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, cell.multiplier * c_curr
            if i == self._aux_index:
                self._aux_channels = c_prev
        return c_prev

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise InputSizeError(
                f"{type(self).__name__} expects input of shape (batch, 3, H, W), got {tuple(x.shape)}"
            )
        if min(x.shape[-2:]) < self.min_input_size:
            raise InputSizeError(
                f"{type(self).__name__} needs H and W >= {self.min_input_size}, got {tuple(x.shape[-2:])}"
            )

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The last cell's feature map and, in training with an auxiliary head, the auxiliary logits."""
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            self._check_input(x)
        s0, s1 = self._stem(x)
        logits_aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self._aux_index and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        return s1, logits_aux

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pooling and the classifier."""
        return self.classifier(self.global_pooling(features).flatten(1))

    def forward(self, x: torch.Tensor) -> NetOutput:
        """Logits; in training with an auxiliary head, the tuple (logits, auxiliary logits)."""
        features, logits_aux = self.forward_features(x)
        logits = self.forward_head(features)
        if logits_aux is not None:
            return logits, logits_aux
        return logits


class NetworkCIFAR(_DartsNetwork):
    """The DARTS CIFAR evaluation network (stem conv 3x3 to 3C, reductions at L/3 and 2L/3)."""

    min_input_size = 4

    def __init__(
        self,
        genotype: CNNGenotype,
        channels: int = 36,
        layers: int = 20,
        num_classes: int = 10,
        auxiliary: bool = True,
        drop_path_prob: float = 0.0,
        stem_multiplier: int = 3,
    ):
        super().__init__()
        validate_cnn_genotype(genotype)
        self.genotype = genotype
        self.drop_path_prob = drop_path_prob
        c_stem = stem_multiplier * channels
        self.stem = nn.Sequential(nn.Conv2d(3, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        c_prev = self._build_cells(genotype, channels, layers, c_stem, reduction_prev=False)
        self.auxiliary_head = AuxiliaryHeadCIFAR(self._aux_channels, num_classes) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.stem(x)
        return s, s


class NetworkImageNet(_DartsNetwork):
    """The DARTS ImageNet mobile-setting network (three stride-2 stem convs, global average pool)."""

    min_input_size = 32

    def __init__(
        self,
        genotype: CNNGenotype,
        channels: int = 48,
        layers: int = 14,
        num_classes: int = 1000,
        auxiliary: bool = True,
        drop_path_prob: float = 0.0,
    ):
        super().__init__()
        validate_cnn_genotype(genotype)
        self.genotype = genotype
        self.drop_path_prob = drop_path_prob
        c = channels
        self.stem0 = nn.Sequential(
            nn.Conv2d(3, c // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c // 2),
            nn.ReLU(inplace=False),
            nn.Conv2d(c // 2, c, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c),
        )
        c_prev = self._build_cells(genotype, channels, layers, c, reduction_prev=True)
        self.auxiliary_head = AuxiliaryHeadImageNet(self._aux_channels, num_classes) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)
        return s0, self.stem1(s0)
