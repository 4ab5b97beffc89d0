"""The Auto-DeepLab supernet: a searched cell (alpha, shared by every cell) on a lattice of resolutions (beta).

Lattice: the stem (two stride-2 convs) gives node (0, 0) at stride 4; layer l = 1..L has nodes at levels
j = 0..3 (strides 4, 8, 16, 32) where j <= l. A node at level j has B * F * 2^j channels.

beta[l, j, d] (l = 0..L-1) is the logit of the transition OUT of node (l, j) towards level j + d - 1 of
layer l + 1 (d = 0: finer, 1: same, 2: coarser). Eq. 7: a softmax over the transitions that exist
(two at the edges of the lattice), so each node's outgoing probabilities sum to 1; entries of missing
transitions are exactly 0 and get no gradient.

Eq. 6: node (l, j) = sum over incoming transitions t from (l - 1, j') of
    p(t) * Cell_t(transition_t(H^{l-1}_{j'}), H^{l-2}_j)
with one cell (own weights, shared alpha) per incoming transition. Transitions: coarser = ReLU, 3x3
stride-2 conv, BN; same = ReLU, 1x1 conv, BN; finer = bilinear resize (align_corners=True) then ReLU,
1x1 conv, BN. H^{l-2}_j is node (l - 2, j); for node (1, 0) it is the stem's stride-2 feature; where it
does not exist the cell uses its H^{l-1} input in its place (as the released cell does for prev_layer
None). Head: one ASPP per level of layer L (1x1, 3x3 at rate 96 / stride, image pooling), logits
upsampled to the input size and summed. Each head's branches are as wide as the node it reads,
B * F * s / 4 (the paper's ASPP); `aspp_channels` > 0 overrides that with one width for every level.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from nasdeploy.config.autodeeplab import AutoDeepLabSupernetConfig
from nasdeploy.errors import InputSizeError
from nasdeploy.genotypes.autodeeplab import AUTODEEPLAB_PRIMITIVES, LEVEL_STRIDES, NUM_LEVELS
from nasdeploy.nets.seg_heads import ASPP
from nasdeploy.ops import ReLUConvBN, build_autodeeplab_op, resize_bilinear
from nasdeploy.spaces.autodeeplab_lattice import node_exists
from nasdeploy.spaces.autodeeplab_lattice import transition_mask as lattice_mask
from nasdeploy.spaces.mixer_table import get_node_mixer
from nasdeploy.spaces.mixing import MixedEdge


def transition_mask(layers: int) -> torch.Tensor:
    """Boolean [layers, levels, 3] tensor of the lattice's transitions (see autodeeplab_lattice)."""
    return torch.from_numpy(lattice_mask(layers))


def outgoing_softmax(beta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 7: softmax over each node's existing outgoing transitions; exact zeros elsewhere."""
    row_valid = mask.any(dim=-1, keepdim=True)
    logits = beta.masked_fill(~mask, float("-inf"))
    # Rows of nodes that do not exist are all -inf: give them finite logits so no NaN reaches autograd.
    logits = torch.where(row_valid, logits, torch.zeros_like(logits))
    return torch.softmax(logits, dim=-1) * mask


class SearchCell(nn.Module):
    """A searched cell on block width c: B blocks, each mixing every earlier state with weights alpha."""

    def __init__(self, blocks: int, channels: int):
        super().__init__()
        self.blocks = blocks
        self.edges = nn.ModuleList(
            MixedEdge(AUTODEEPLAB_PRIMITIVES, channels, 1, build_autodeeplab_op) for i in range(blocks) for _ in range(2 + i)
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor, mixer) -> torch.Tensor:
        states = [s0, s1]
        offset = 0
        for i in range(self.blocks):
            n = 2 + i
            states.append(mixer(states, self.edges[offset:offset + n], weights[offset:offset + n]))
            offset += n
        return torch.cat(states[2:], dim=1)


def num_cell_edges(blocks: int) -> int:
    """Edges of a cell: block i reads every one of the 2 + i earlier states."""
    return sum(2 + i for i in range(blocks))


class AutoDeepLabSupernet(nn.Module):
    """The hierarchical search space of Auto-DeepLab with alpha and beta as real parameters."""

    def __init__(self, config: AutoDeepLabSupernetConfig = AutoDeepLabSupernetConfig()):
        super().__init__()
        self.config = config
        self.mixer_name, self._mixer = get_node_mixer(config.mixed_op)
        L, F, B = config.layers, config.filter_multiplier, config.blocks
        self.block_channels = [F * 2**j for j in range(NUM_LEVELS)]
        self.node_channels = [B * c for c in self.block_channels]
        c_stem = config.stem_channels
        self.stem0 = nn.Sequential(nn.Conv2d(3, c_stem, 3, 2, 1, bias=False), nn.BatchNorm2d(c_stem), nn.ReLU(inplace=False))
        self.stem1 = nn.Sequential(nn.Conv2d(c_stem, self.node_channels[0], 3, 2, 1, bias=False),
                                   nn.BatchNorm2d(self.node_channels[0]))
        self.transitions = nn.ModuleDict()
        self.prev_prev = nn.ModuleDict()
        self.cells = nn.ModuleDict()
        for l in range(1, L + 1):
            for j in range(NUM_LEVELS):
                if not node_exists(l, j):
                    continue
                for src in self.sources(l, j):
                    key = self.key(l, j, src)
                    c_src, c = self.node_channels[src], self.block_channels[j]
                    stride, kernel = (2, 3) if src == j - 1 else (1, 1)
                    self.transitions[key] = ReLUConvBN(c_src, c, kernel, stride, kernel // 2, affine=False)
                    c_pp = self._prev_prev_channels(l, j)
                    if c_pp is not None:
                        self.prev_prev[key] = ReLUConvBN(c_pp, c, 1, 1, 0, affine=False)
                    self.cells[key] = SearchCell(B, c)
        self.heads = nn.ModuleDict()
        for j in range(NUM_LEVELS):
            if node_exists(L, j):
                rate = 96 // LEVEL_STRIDES[j]
                # Paper: every ASPP branch has the node's own width (not B * F at every level, which would
                # squeeze the stride-32 node's 8x wider features and bias the beta gradients towards fine levels).
                aspp_c = config.aspp_channels or self.node_channels[j]
                self.heads[str(j)] = nn.Sequential(
                    ASPP(self.node_channels[j], aspp_c, (rate,), separable=False, dropout=0.0),
                    nn.Conv2d(aspp_c, config.num_classes, 1),
                )
        self.alphas = nn.Parameter(1e-3 * torch.randn(num_cell_edges(B), len(AUTODEEPLAB_PRIMITIVES)))
        self.betas = nn.Parameter(1e-3 * torch.randn(L, NUM_LEVELS, 3))
        self.register_buffer("beta_mask", transition_mask(L), persistent=False)

    # -- lattice bookkeeping ------------------------------------------------------------------
    @staticmethod
    def key(layer: int, level: int, source: int) -> str:
        """Module key of the cell/transition into (layer, level) from level `source` of layer - 1."""
        return f"{layer}_{level}_{source}"

    @staticmethod
    def sources(layer: int, level: int) -> list[int]:
        """Levels of layer - 1 with a transition into (layer, level)."""
        return [s for s in (level - 1, level, level + 1) if node_exists(layer - 1, s)]

    def _prev_prev_channels(self, layer: int, level: int) -> int | None:
        if layer == 1 and level == 0:
            return self.config.stem_channels
        if layer >= 2 and node_exists(layer - 2, level):
            return self.node_channels[level]
        return None

    # -- parameters ---------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """Architecture parameters: cell alpha [edges, ops] and network beta [layers, levels, 3]."""
        return [self.alphas, self.betas]

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter except alpha and beta."""
        arch = {id(p) for p in self.arch_parameters()}
        return (p for p in self.parameters() if id(p) not in arch)

    def alpha_weights(self) -> torch.Tensor:
        """Softmax over ops per edge."""
        return torch.softmax(self.alphas, dim=-1)

    def beta_weights(self) -> torch.Tensor:
        """Eq. 7 probabilities [layers, levels, 3] over each node's outgoing transitions."""
        return outgoing_softmax(self.betas, self.beta_mask)

    # -- forward ------------------------------------------------------------------------------
    def forward_nodes(self, x: torch.Tensor) -> dict[tuple[int, int], torch.Tensor]:
        """Every lattice node's feature map, keyed (layer, level); (0, 0) is the stem output."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise InputSizeError(f"AutoDeepLabSupernet expects input of shape (batch, 3, H, W), got {tuple(x.shape)}")
        alpha = self.alpha_weights()
        beta = self.beta_weights()
        h_minus1 = self.stem0(x)
        nodes: dict[tuple[int, int], torch.Tensor] = {(0, 0): self.stem1(h_minus1)}
        sizes = [tuple(nodes[(0, 0)].shape[-2:])]
        for _ in range(NUM_LEVELS - 1):
            sizes.append(tuple((s - 1) // 2 + 1 for s in sizes[-1]))
        for l in range(1, self.config.layers + 1):
            for j in range(NUM_LEVELS):
                if not node_exists(l, j):
                    continue
                if l == 1 and j == 0:
                    h_pp = resize_bilinear(h_minus1, sizes[0])
                else:
                    h_pp = nodes.get((l - 2, j))
                total = None
                for src in self.sources(l, j):
                    key = self.key(l, j, src)
                    h = nodes[(l - 1, src)]
                    if src == j + 1:
                        h = resize_bilinear(h, sizes[j])
                    s1 = self.transitions[key](h)
                    s0 = self.prev_prev[key](h_pp) if h_pp is not None else s1
                    term = beta[l - 1, src, j - src + 1] * self.cells[key](s0, s1, alpha, self._mixer)
                    total = term if total is None else total + term
                nodes[(l, j)] = total
        return nodes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits: the sum of every last-layer level's ASPP logits, upsampled to the input size."""
        nodes = self.forward_nodes(x)
        size = (x.shape[-2], x.shape[-1])
        out = None
        for j, head in self.heads.items():
            logits = resize_bilinear(head(nodes[(self.config.layers, int(j))]), size)
            out = logits if out is None else out + logits
        return out
