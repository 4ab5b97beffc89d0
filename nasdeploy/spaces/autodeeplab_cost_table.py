"""The Auto-DeepLab deployment cost as a function of (cell, path): exact table cost and differentiable E[cost](alpha, beta).

Design note (for the README):

Model. The static segmentation network (nets/autodeeplab.py) runs one cell per path layer. What a cell
costs depends on where it runs: its level (width F * 2^level), whether it moves down (stride-2 ops on the
cell inputs), its input size (which for even input sizes depends on the path's history: an up move
gives (h - 1) * 2 + 1, not always the size the level had before), and, for its 1x1 pre-processing, the
widths of the two previous outputs. The network path is therefore a walk over *states* (level, size,
the two previous widths, the decoder's stride-4 feature so far), deterministic given the path; each
layer-l state has up to three transitions (d = 0 finer, 1 same, 2 coarser, as beta[l, level, d]).
Each transition runs one cell in a *context* (level, stride, input size): its cost is the transition's
genotype-independent part (pre-processing) plus, per kept (edge, op), cell_ops[context, edge, op].
A final state adds the head (ASPP on the last cell, DeepLabv3+ decoder on the stride-4 feature); the
stem is a constant. So cost(cell, path) = stem + sum over the path's transitions of (transition +
sum over kept edges of cell_ops[context]) + head(final state): additive, exact (the table builder in
profile/autodeeplab_cost_table_build.py counts every piece with the profiler's FlopCounterMode, and a test
checks the sum against the profiler's count of whole networks).

Expectation. E[cost](alpha, beta): beta's Eq. 7 probabilities make the path a Markov chain over the
states from the stem; a forward pass gives each state's probability, hence the expected number of
cells run in each context. Per context the expected cell cost is the DARTS cost term's convention
(search/cost.py): a softmax over the non-'none' ops per edge, each of block i's 2 + i incoming edges
weighted 2 / (2 + i) (its two inputs drawn uniformly). E[cost] = stem + sum over transitions of
P(transition) * (transition cost + expected cell cost in its context) + sum over final states of
P(state) * head. Differentiable in alpha and beta; O(layers * states * 3 + contexts * edges * ops).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from nasdeploy.errors import ConfigError
from nasdeploy.genotypes.autodeeplab import AUTODEEPLAB_PRIMITIVES, AutoDeepLabGenotype
from nasdeploy.spaces.autodeeplab import outgoing_softmax, transition_mask

NONE_OP = "none"


@dataclass(frozen=True)
class AutoDeepLabCostTable:
    """Per-context cell op costs and the path's state machine with its genotype-independent costs."""

    blocks: int
    stem: float
    contexts: tuple[tuple[int, ...], ...]  # per context: (level, stride, input height, input width)
    cell_ops: np.ndarray  # float64 [contexts, edges, primitives]
    levels: tuple[tuple[int, ...], ...]  # per layer 0..L: the level of each state (layer 0: the stem)
    next_state: tuple[np.ndarray, ...]  # per layer 0..L-1: int [states, 3], -1 where the move does not exist
    context: tuple[np.ndarray, ...]  # per layer 0..L-1: int [states, 3], context of the cell that move runs
    transition: tuple[np.ndarray, ...]  # per layer 0..L-1: float [states, 3], that cell's fixed cost
    head: np.ndarray  # float [states of layer L]: ASPP + decoder after the last cell
    primitives: tuple[str, ...] = AUTODEEPLAB_PRIMITIVES
    metric: str = "macs"
    net: dict[str, Any] = field(default_factory=dict)  # what network it describes (for reports and caches)

    def __post_init__(self) -> None:
        edges = sum(2 + i for i in range(self.blocks))
        if self.cell_ops.shape != (len(self.contexts), edges, len(self.primitives)):
            raise ConfigError(f"autodeeplab cost table: cell_ops has shape {self.cell_ops.shape}, expected "
                              f"{(len(self.contexts), edges, len(self.primitives))} (contexts, edges, primitives)")
        n = len(self.next_state)
        if not (len(self.levels) == n + 1 == len(self.context) + 1 == len(self.transition) + 1) or n < 1:
            raise ConfigError("autodeeplab cost table: per-layer tables disagree on the number of layers")
        for l in range(n):
            shape = (len(self.levels[l]), 3)
            if not (self.next_state[l].shape == self.context[l].shape == self.transition[l].shape == shape):
                raise ConfigError(f"autodeeplab cost table: layer {l} tables do not have shape {shape}")
        if self.head.shape != (len(self.levels[n]),):
            raise ConfigError("autodeeplab cost table: one head cost per final state expected")

    @property
    def layers(self) -> int:
        """Cell layers on a path."""
        return len(self.next_state)

    def walk(self, path: Sequence[int]) -> list[tuple[int, int, int, int]]:
        """(layer, state, direction, next state) of each move of `path`; ConfigError if the path is not in the lattice."""
        if len(path) != self.layers:
            raise ConfigError(f"path of {len(path)} layers does not fit this cost table ({self.layers} layers)")
        moves, state = [], 0
        for l, level in enumerate(path):
            d = int(level) - self.levels[l][state] + 1
            nxt = int(self.next_state[l][state, d]) if 0 <= d < 3 else -1
            if nxt < 0:
                raise ConfigError(f"path {list(path)} leaves the lattice at layer {l + 1}")
            moves.append((l, state, d, nxt))
            state = nxt
        return moves

    def path_counts(self, path: Sequence[int]) -> tuple[np.ndarray, float]:
        """Cells the path runs in each context, and its genotype-independent cost (stem, pre-processing, head)."""
        counts = np.zeros(len(self.contexts), dtype=np.int64)
        fixed = self.stem
        state = 0
        for l, s, d, nxt in self.walk(path):
            counts[self.context[l][s, d]] += 1
            fixed += float(self.transition[l][s, d])
            state = nxt
        return counts, fixed + float(self.head[state])

    def cell_cost_matrix(self, counts: np.ndarray) -> np.ndarray:
        """[edges, primitives]: what each (edge, op) costs over all the cells of a path with these context counts."""
        return np.tensordot(np.asarray(counts, dtype=np.float64), self.cell_ops, axes=1)

    def genotype_cost(self, genotype: AutoDeepLabGenotype) -> float:
        """Table cost of a genotype's deployment network (exact for MACs)."""
        if genotype.blocks != self.blocks:
            raise ConfigError(f"genotype cell has {genotype.blocks} blocks; the cost table {self.blocks}")
        counts, fixed = self.path_counts(genotype.path)
        matrix = self.cell_cost_matrix(counts)
        col = {p: k for k, p in enumerate(self.primitives)}
        total = fixed
        for k, (op, source) in enumerate(genotype.cell):
            total += float(matrix[sum(2 + i for i in range(k // 2)) + source, col[op]])
        return float(int(round(total))) if self.metric == "macs" else float(total)

    def expected_cost(self, alphas: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
        """E[cost] (float64 scalar, differentiable) of alpha logits [edges, primitives] and beta logits [L, 4, 3]."""
        device = alphas.device
        if betas.shape[0] != self.layers:
            raise ConfigError(f"beta has {betas.shape[0]} layers; the cost table {self.layers}")
        keep = torch.tensor([k for k, p in enumerate(self.primitives) if p != NONE_OP], device=device)
        probs = torch.softmax(alphas.double().index_select(1, keep), dim=-1)
        edge_weight = torch.tensor([2.0 / (2 + i) for i in range(self.blocks) for _ in range(2 + i)],
                                   dtype=torch.float64, device=device)
        ops = torch.from_numpy(self.cell_ops).to(device).index_select(2, keep)
        per_context = (ops * (edge_weight[:, None] * probs)[None]).sum(dim=(1, 2))
        q = outgoing_softmax(betas.double(), transition_mask(self.layers).to(device))
        occupancy = torch.ones(1, dtype=torch.float64, device=device)
        total = torch.tensor(self.stem, dtype=torch.float64, device=device)
        for l in range(self.layers):
            nxt = torch.from_numpy(self.next_state[l]).to(device)
            valid = nxt >= 0
            levels = torch.tensor(self.levels[l], device=device)
            flow = occupancy[:, None] * q[l].index_select(0, levels) * valid
            ctx = torch.from_numpy(self.context[l]).to(device).clamp_min(0)
            step = torch.from_numpy(self.transition[l]).to(device) + per_context[ctx]
            total = total + (flow * torch.where(valid, step, torch.zeros_like(step))).sum()
            occupancy = torch.zeros(len(self.levels[l + 1]), dtype=torch.float64, device=device).index_add(
                0, nxt[valid], flow[valid])
        return total + (occupancy * torch.from_numpy(self.head).to(device)).sum()

    # -- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"blocks": self.blocks, "stem": self.stem, "contexts": [list(c) for c in self.contexts],
                "cell_ops": self.cell_ops.tolist(), "levels": [list(v) for v in self.levels],
                "next_state": [a.tolist() for a in self.next_state], "context": [a.tolist() for a in self.context],
                "transition": [a.tolist() for a in self.transition], "head": self.head.tolist(),
                "primitives": list(self.primitives), "metric": self.metric, "net": self.net}


def autodeeplab_cost_table_from_dict(data: dict[str, Any], source: str = "autodeeplab cost table") -> AutoDeepLabCostTable:
    """Parse the JSON form (one-line ConfigError when malformed)."""
    try:
        return AutoDeepLabCostTable(
            blocks=int(data["blocks"]), stem=float(data["stem"]),
            contexts=tuple(tuple(int(v) for v in c) for c in data["contexts"]),
            cell_ops=np.asarray(data["cell_ops"], dtype=np.float64),
            levels=tuple(tuple(int(v) for v in lv) for lv in data["levels"]),
            next_state=tuple(np.asarray(a, dtype=np.int64).reshape(-1, 3) for a in data["next_state"]),
            context=tuple(np.asarray(a, dtype=np.int64).reshape(-1, 3) for a in data["context"]),
            transition=tuple(np.asarray(a, dtype=np.float64).reshape(-1, 3) for a in data["transition"]),
            head=np.asarray(data["head"], dtype=np.float64), primitives=tuple(data["primitives"]),
            metric=str(data["metric"]), net=dict(data.get("net") or {}))
    except ConfigError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{source} is malformed ({type(exc).__name__}: {exc})") from None
