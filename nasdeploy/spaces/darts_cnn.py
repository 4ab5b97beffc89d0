"""The DARTS CNN search space: search cells of MixedEdges and the supernet with alphas as parameters.

Every intermediate node calls the NodeMixer once with all of its incoming edges, so a fused
implementation (get_node_mixer("fused")) can replace the whole node. Module names follow the
reference search model (stem, cells.N.preprocess0, cells.N._ops.M._ops.K, classifier).
With partial_channels K > 1 it is the PC-DARTS supernet: ops on C/K channels, channel shuffle, and
edge-normalisation parameters betas_normal / betas_reduce (see spaces/partial_channels.py).
With aux_skip it is DARTS-'s supernet (Chu et al. 2020): every edge also adds aux_skip_weight * skip(x)
outside the softmax (identity, or FactorizedReduce on a stride-2 edge as in its reference code); the
search loop decays the weight (spaces/darts_cnn_guards.py). The auxiliary skip is no candidate op: it has
no alpha and the derivation never sees it.
"""

from __future__ import annotations

from typing import Iterator, Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nasdeploy.errors import ConfigError
from nasdeploy.genotypes import CNN_PRIMITIVES, CNNGenotype
from nasdeploy.ops import FactorizedReduce, ReLUConvBN
from nasdeploy.ops.layout import unsafe_channels_last_convs
from nasdeploy.spaces.darts_cnn_derive import derive_genotype
from nasdeploy.spaces.lean_ops import lean_preprocess, lean_preprocess_applies
from nasdeploy.spaces.mixer_table import get_node_mixer
from nasdeploy.spaces.mixing import MixedEdge, NodeMixer
from nasdeploy.spaces.partial_channels import node_softmax, partial_cell_nodes

AlphaInit = Literal["normal", "zeros"]


def num_edges(steps: int) -> int:
    """Edges of a cell with `steps` intermediate nodes: node i has 2 + i incoming edges."""
    return sum(2 + i for i in range(steps))


class SearchCell(nn.Module):
    """A DARTS search cell: every intermediate node mixes every earlier state over all primitives."""

    def __init__(
        self,
        steps: int,
        multiplier: int,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
        primitives: Sequence[str],
        mixer: NodeMixer,
        partial_channels: int = 1,
        aux_skip: bool = False,
    ):
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        self.multiplier = multiplier
        self.mixer = mixer
        self.partial_channels = partial_channels
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(c_prev_prev, channels, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(c_prev_prev, channels, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(c_prev, channels, 1, 1, 0, affine=False)
        # A narrow FactorizedReduce must not see channels-last input on the CPU (see nasdeploy.ops.layout).
        self._nchw_s0 = bool(unsafe_channels_last_convs(self.preprocess0))
        self._ops = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self._ops.append(MixedEdge(primitives, channels // partial_channels, stride))
        # DARTS-'s auxiliary skip of each edge (absent, and no state_dict entries, without it).
        self._aux_skips = nn.ModuleList([
            FactorizedReduce(channels, channels, affine=False) if reduction and j < 2 else nn.Identity()
            for i in range(steps) for j in range(2 + i)]) if aux_skip else None

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                edge_weights: torch.Tensor | None = None, aux_weight: float = 0.0) -> torch.Tensor:
        """Cell output for softmaxed op weights `weights` [num_edges, num_primitives] and, with partial
        channels, the node-normalised edge weights `edge_weights` [num_edges]; aux_weight: DARTS-'s skip weight."""
        if self._nchw_s0 and s0.device.type == "cpu":
            s0 = s0.contiguous()
        states = [_preprocess(self.preprocess0, s0), _preprocess(self.preprocess1, s1)]
        if self.partial_channels > 1:
            if edge_weights is None:
                raise ValueError("a partial-channel cell needs edge weights (softmaxed betas)")
            states += partial_cell_nodes(self.mixer, states[0], states[1], self._ops, weights, edge_weights,
                                         self.steps, self.partial_channels)
            return torch.cat(states[-self.multiplier:], dim=1)
        offset = 0
        for _ in range(self.steps):
            n = len(states)
            node = self.mixer(states, self._ops[offset:offset + n], weights[offset:offset + n])
            if aux_weight and self._aux_skips is not None:
                node = node + aux_weight * self._aux_sum(states, offset)
            offset += n
            states.append(node)
        return torch.cat(states[-self.multiplier:], dim=1)

    def _aux_sum(self, states: list[torch.Tensor], offset: int) -> torch.Tensor:
        """The sum of a node's auxiliary skips; a strided one sees NCHW input on the CPU (see ops.layout)."""
        total = None
        for x, skip in zip(states, self._aux_skips[offset:offset + len(states)]):
            if isinstance(skip, FactorizedReduce) and x.device.type == "cpu":
                x = x.contiguous()
            total = skip(x) if total is None else total + skip(x)
        return total


def _preprocess(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # The same values, keeping fewer full-width tensors for backward where it applies (see spaces/lean_ops.py).
    return lean_preprocess(module, x) if lean_preprocess_applies(module) else module(x)


class DartsCnnSupernet(nn.Module):
    """The DARTS CNN supernet (CIFAR search: C=16, 8 layers, 4 steps, multiplier 4, stem multiplier 3);
    partial_channels K > 1 makes it PC-DARTS's (K=4 in its reference code); recompute_op_bodies trades time for memory
    (spaces/lean_ops.py; None: on for PC-DARTS on the CPU, where it was measured, off otherwise)."""

    def __init__(
        self,
        channels: int = 16,
        num_classes: int = 10,
        layers: int = 8,
        steps: int = 4,
        multiplier: int = 4,
        stem_multiplier: int = 3,
        primitives: Sequence[str] = CNN_PRIMITIVES,
        mixed_op: str | None = None,
        alpha_init: AlphaInit = "normal",
        alpha_init_scale: float = 1e-3,
        partial_channels: int = 1,
        aux_skip: bool = False,
        recompute_op_bodies: bool | None = None,
    ):
        super().__init__()
        _check_sizes(channels, num_classes, layers, steps, multiplier, stem_multiplier, primitives)
        _check_partial_channels(channels, partial_channels)
        if aux_skip and partial_channels > 1:
            raise ConfigError("DARTS-'s auxiliary skip runs on plain DARTS supernets only (partial_channels 1)")
        if alpha_init not in ("normal", "zeros"):
            raise ConfigError(f"alpha_init must be 'normal' or 'zeros', got {alpha_init!r}")
        self.channels = channels
        self.num_classes = num_classes
        self.layers = layers
        self.steps = steps
        self.multiplier = multiplier
        self.primitives = tuple(primitives)
        self.partial_channels = partial_channels
        self.aux_skip_weight = 0.0  # DARTS-'s current weight (set by the search loop each epoch; 0: off)
        # recompute_op_bodies: conv candidates keep only their input for backward and recompute the rest, a strided skip
        # keeps no padded copy (fused mixer only; values equal, gradients up to rounding). By default on for PC-DARTS on
        # CPU tensors, where its narrow parts gain the most memory for the least time (scripts/bench_pcdarts.py); not
        # measured on a GPU, so off there.
        if recompute_op_bodies is None and partial_channels == 1:
            recompute_op_bodies = False
        self.recompute_op_bodies = recompute_op_bodies
        self.mixed_op, mixer = get_node_mixer(mixed_op, recompute_op_bodies=recompute_op_bodies)

        c_curr = stem_multiplier * channels
        self.stem = nn.Sequential(nn.Conv2d(3, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
        c_prev_prev, c_prev, c_curr = c_curr, c_curr, channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c_curr *= 2
            cell = SearchCell(steps, multiplier, c_prev_prev, c_prev, c_curr, reduction, reduction_prev,
                              self.primitives, mixer, partial_channels, aux_skip)
            self.cells.append(cell)
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, multiplier * c_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

        def init(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.zeros(shape) if alpha_init == "zeros" else alpha_init_scale * torch.randn(shape))

        shape = (num_edges(steps), len(self.primitives))
        self.alphas_normal = init(*shape)
        self.alphas_reduce = init(*shape)
        # PC-DARTS's edge normalisation, initialised like the alphas; absent (None) in plain DARTS.
        self.register_parameter("betas_normal", init(shape[0]) if partial_channels > 1 else None)
        self.register_parameter("betas_reduce", init(shape[0]) if partial_channels > 1 else None)

    # -- parameter groups -------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture weights [alphas_normal, alphas_reduce] (+ [betas_normal, betas_reduce] with K > 1)."""
        betas = [self.betas_normal, self.betas_reduce] if self.betas_normal is not None else []
        return [self.alphas_normal, self.alphas_reduce, *betas]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not an architecture weight."""
        return [p for _, p in self.named_weight_parameters()]

    def named_weight_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) of the network weights (alphas and betas excluded)."""
        arch = {id(p) for p in self.arch_parameters()}
        for name, p in self.named_parameters():
            if id(p) not in arch:
                yield name, p

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the supernet with the current alphas (and betas)."""
        weights_normal = F.softmax(self.alphas_normal, dim=-1)
        weights_reduce = F.softmax(self.alphas_reduce, dim=-1)
        edges_normal = edges_reduce = None
        if self.betas_normal is not None and self.betas_reduce is not None:
            edges_normal = node_softmax(self.betas_normal, self.steps)
            edges_reduce = node_softmax(self.betas_reduce, self.steps)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            if cell.reduction:
                s0, s1 = s1, cell(s0, s1, weights_reduce, edges_reduce, self.aux_skip_weight)
            else:
                s0, s1 = s1, cell(s0, s1, weights_normal, edges_normal, self.aux_skip_weight)
        return self.classifier(self.global_pooling(s1).flatten(1))

    # -- derivation -------------------------------------------------------------------------------
    def softmaxed_alphas(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax over primitives of each edge (normal, reduce), detached."""
        return (F.softmax(self.alphas_normal.detach(), dim=-1), F.softmax(self.alphas_reduce.detach(), dim=-1))

    def genotype(self) -> CNNGenotype:
        """The genotype the DARTS rule derives from the current alphas (op weights times the
        node-normalised betas with partial channels, as PC-DARTS derives)."""
        return derive_genotype(self.alphas_normal, self.alphas_reduce, self.primitives, self.steps, self.multiplier,
                               betas_normal=self.betas_normal, betas_reduce=self.betas_reduce)


def _check_sizes(channels: int, num_classes: int, layers: int, steps: int, multiplier: int,
                 stem_multiplier: int, primitives: Sequence[str]) -> None:
    for key, value in (("channels", channels), ("num_classes", num_classes), ("layers", layers),
                       ("steps", steps), ("multiplier", multiplier), ("stem_multiplier", stem_multiplier)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"supernet {key} must be a positive integer, got {value!r}")
    if channels % 2:
        raise ConfigError(f"supernet channels must be even (FactorizedReduce halves them), got {channels}")
    if multiplier > steps:
        raise ConfigError(f"supernet multiplier ({multiplier}) cannot exceed steps ({steps})")
    unknown = [p for p in primitives if p not in CNN_PRIMITIVES]
    if unknown or not primitives:
        raise ConfigError(f"unknown or empty primitives {unknown!r}; valid: {', '.join(CNN_PRIMITIVES)}")


def _check_partial_channels(channels: int, partial_channels: int) -> None:
    # Cells have channels x 1, 2 or 4, so K | channels makes every cell's width divisible by K (and
    # the stride-2 skip's FactorizedReduce on 2C/K or 4C/K channels gets an even count).
    if not isinstance(partial_channels, int) or isinstance(partial_channels, bool) or partial_channels < 1:
        raise ConfigError(f"partial_channels must be an integer >= 1 (1 = plain DARTS), got {partial_channels!r}")
    if channels % partial_channels:
        raise ConfigError(f"channels ({channels}) must be divisible by partial_channels ({partial_channels}): "
                          "every cell runs its ops on channels / partial_channels")
