"""DARTS CNN derivation under a cost budget: the best-scoring genotype whose table cost fits (exact).

Design note (for the README):

Score. The DARTS score of a genotype is the sum, over its kept edges, of the chosen op's weight in the
final per-edge op weights (softmax of alpha per edge, times any edge weighting such as PC-DARTS's
normalised betas, supplied by the caller). Per node the DARTS rule keeps the two incoming edges of
largest best-non-'none' weight and that op on each, which is exactly the per-node maximiser of this
score; so without a budget (or when the DARTS genotype fits) the result is the DARTS rule's genotype,
tie-breaking included (lower input index, then lower op column).

Cost. The deployment network's cost (MACs, or latency on one backend) is a fixed part plus one table
entry per kept (cell, edge, op); all normal cells share one genotype cell and all reduction cells the
other, so the cost is fixed + sum over kept normal edges of W_normal[edge, op] + the same for reduce,
where W_t sums the entries over the net's cells of type t (profile.cost_table.CostTable.cell_type_weights).

Method. One budget covers both cells, so the 2 x steps nodes (normal then reduce) are solved jointly as
a multiple-choice knapsack by the exact Pareto-frontier DP of spaces.cell_knapsack (see its note for
pruning, exactness and tie-breaking). Exact up to float64 rounding of score sums; MAC costs are integers
and are summed exactly. Milliseconds for 2 x 4 nodes and 8 ops; well under a second for 2 x 5 nodes.

Edges of a node are listed strongest first (by the chosen op's weight, ties to the lower input), as the
DARTS rule lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from nasdeploy.errors import ConfigError, GenotypeError
from nasdeploy.genotypes import CNN_PRIMITIVES, CNNGenotype, validate_cnn_genotype
from nasdeploy.spaces.cell_knapsack import CellChoice, best_unconstrained, cheapest_cost, solve_cell

NONE_OP = "none"
COST_UNITS = {"macs": "MACs", "latency": "ms"}


@dataclass(frozen=True)
class DartsCnnCellCosts:
    """The deployment cost as the budget sees it: per cell type [edges, primitives] entries, plus a fixed part."""

    normal: np.ndarray  # summed over the net's normal cells
    reduce: np.ndarray  # summed over its reduction cells
    fixed: float
    metric: str = "macs"  # macs | latency

    @classmethod
    def from_table(cls, table: Any, metric: str = "macs") -> DartsCnnCellCosts:
        """From a profile.cost_table.CostTable (duck-typed: spaces do not import profile)."""
        normal, reduce = table.cell_type_weights(metric)
        return cls(np.asarray(normal, dtype=np.float64), np.asarray(reduce, dtype=np.float64),
                   float(table.fixed_total(metric)), metric)


@dataclass(frozen=True)
class BudgetedCnnGenotype:
    """A genotype derived under a budget, next to the unconstrained (DARTS rule) one."""

    genotype: CNNGenotype
    score: float
    cost: float
    unconstrained: CNNGenotype
    unconstrained_score: float
    unconstrained_cost: float
    budget: float
    metric: str

    @property
    def binding(self) -> bool:
        """True when the DARTS rule's genotype is over the budget, so the budget changed the result."""
        return self.unconstrained_cost > self.budget

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (for logs and the report)."""
        return {"metric": self.metric, "budget": self.budget, "cost": self.cost, "score": self.score,
                "unconstrained_cost": self.unconstrained_cost, "unconstrained_score": self.unconstrained_score,
                "binding": self.binding}


def derive_genotype_under_budget(
    weights_normal: Any,
    weights_reduce: Any,
    costs: DartsCnnCellCosts,
    budget: float,
    primitives: Sequence[str] = CNN_PRIMITIVES,
    steps: int = 4,
    multiplier: int = 4,
    name: str | None = None,
) -> BudgetedCnnGenotype:
    """The highest-scoring genotype whose cost is <= budget (ConfigError naming the cheapest cost when none is).

    weights_*: final per-edge op weights [edges, primitives] (after softmax and any edge weighting), not logits.
    """
    w_n = _weights(weights_normal, "normal", steps, primitives)
    w_r = _weights(weights_reduce, "reduce", steps, primitives)
    c_n = _weights(costs.normal, "normal cost", steps, primitives)
    c_r = _weights(costs.reduce, "reduce cost", steps, primitives)
    if multiplier > steps or multiplier < 1:
        raise GenotypeError(f"multiplier must be in 1..steps ({steps}), got {multiplier}")
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or not budget > 0:
        raise ConfigError(f"the cost budget must be a positive number, got {budget!r}")
    columns = [k for k, p in enumerate(primitives) if p != NONE_OP]
    if not columns:
        raise GenotypeError("derivation needs at least one primitive other than 'none'")
    scores = _per_node(w_n, steps) + _per_node(w_r, steps)
    node_costs = _per_node(c_n, steps) + _per_node(c_r, steps)

    free = best_unconstrained(scores, node_costs, columns)
    free_cost = costs.fixed + free.cost
    if free_cost <= budget:
        chosen = free
    else:
        found = solve_cell(scores, node_costs, columns, budget - costs.fixed)
        if found is None:
            cheapest = costs.fixed + cheapest_cost(node_costs, columns)
            unit = COST_UNITS.get(costs.metric, costs.metric)
            raise ConfigError(f"no genotype fits the {costs.metric} budget {_fmt(budget)} {unit}: the cheapest one "
                              f"this space and network allow costs {_fmt(cheapest)} {unit}")
        chosen = found
    concat = tuple(range(2 + steps - multiplier, 2 + steps))
    genotype = _genotype(chosen, scores, primitives, steps, concat, name)
    unconstrained = _genotype(free, scores, primitives, steps, concat, name)
    return BudgetedCnnGenotype(genotype, chosen.score, costs.fixed + chosen.cost, unconstrained, free.score,
                               free_cost, float(budget), costs.metric)


def genotype_score(genotype: CNNGenotype, weights_normal: Any, weights_reduce: Any,
                   primitives: Sequence[str] = CNN_PRIMITIVES) -> float:
    """The DARTS score of a genotype: sum over its kept edges of the chosen op's weight."""
    col = {p: k for k, p in enumerate(primitives)}
    total = 0.0
    for edges, weights in ((genotype.normal, weights_normal), (genotype.reduce, weights_reduce)):
        w = np.asarray(weights, dtype=np.float64)
        for k, (op, source) in enumerate(edges):
            node = k // 2
            total += float(w[sum(2 + i for i in range(node)) + source, col[op]])
    return total


def _genotype(choice: CellChoice, scores: list[np.ndarray], primitives: Sequence[str], steps: int,
              concat: tuple[int, ...], name: str | None) -> CNNGenotype:
    cells = []
    for offset in (0, steps):
        edges: list[tuple[str, int]] = []
        for t in range(offset, offset + steps):
            node, w = choice.nodes[t], scores[t]
            pair = list(zip(node.inputs, node.columns))
            pair.sort(key=lambda e: (-w[e[0], e[1]], e[0]))
            edges.extend((primitives[col], source) for source, col in pair)
        cells.append(tuple(edges))
    genotype = CNNGenotype(cells[0], concat, cells[1], concat, name=name)
    validate_cnn_genotype(genotype)
    return genotype


def _per_node(matrix: np.ndarray, steps: int) -> list[np.ndarray]:
    out, start = [], 0
    for i in range(steps):
        out.append(matrix[start:start + 2 + i])
        start += 2 + i
    return out


def _weights(values: Any, label: str, steps: int, primitives: Sequence[str]) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().double().numpy()
    a = np.asarray(values, dtype=np.float64)
    expected = (sum(2 + i for i in range(steps)), len(primitives))
    if a.shape != expected:
        raise GenotypeError(f"{label} weights of shape {a.shape} do not fit {steps} steps x {len(primitives)} "
                            f"primitives (expected {expected})")
    if not np.all(np.isfinite(a)):
        raise GenotypeError(f"{label} weights contain NaN or infinite values")
    return a


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 or float(value).is_integer() else f"{value:.4g}"
