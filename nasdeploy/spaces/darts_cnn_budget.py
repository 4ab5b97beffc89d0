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

Skip cap (P-DARTS, Chen et al. 2019: at most M skip connections in the normal cell, M = 2). Given
max_skips, the same single knapsack also carries a count per (edge, op) -- 1 for skip_connect in the
normal cell, 0 elsewhere -- and keeps the total <= M (spaces.cell_knapsack, "Count cap"): the result is
the highest-scoring genotype within the budget *and* the cap, exactly (P-DARTS's own rule -- drop the
weakest skip connections and re-derive -- is a greedy approximation of it). Without a budget (budget
inf, zero costs) it is the best genotype under the cap alone.

Edges of a node are listed strongest first (by the chosen op's weight, ties to the lower input), as the
DARTS rule lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import math

import numpy as np

from nasdeploy.errors import ConfigError, GenotypeError
from nasdeploy.genotypes import CNN_PRIMITIVES, CNNGenotype, validate_cnn_genotype
from nasdeploy.spaces.cell_knapsack import CellChoice, best_unconstrained, cheapest_cost, rows_per_node, solve_cell
from nasdeploy.spaces.darts_cnn_guards import SKIP_OP, skip_connections

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

    @classmethod
    def zeros(cls, steps: int, primitives: Sequence[str]) -> DartsCnnCellCosts:
        """No cost at all (a derivation with a skip cap and no budget)."""
        shape = (sum(2 + i for i in range(steps)), len(primitives))
        return cls(np.zeros(shape), np.zeros(shape), 0.0)


@dataclass(frozen=True)
class BudgetedCnnGenotype:
    """A genotype derived under a budget, next to the unconstrained (DARTS rule) one."""

    genotype: CNNGenotype
    score: float
    cost: float
    unconstrained: CNNGenotype
    unconstrained_score: float
    unconstrained_cost: float
    budget: float  # inf: no budget
    metric: str
    max_skips: int | None = None  # the skip cap on the normal cell (None: none)

    @property
    def binding(self) -> bool:
        """True when the DARTS rule's genotype is over the budget, so the budget changed the result."""
        return self.unconstrained_cost > self.budget

    @property
    def capped(self) -> bool:
        """True when the DARTS rule's normal cell holds more skip connections than the cap allows."""
        return self.max_skips is not None and skip_connections(self.unconstrained) > self.max_skips

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (for logs and the report)."""
        return {"metric": self.metric, "budget": self.budget, "cost": self.cost, "score": self.score,
                "unconstrained_cost": self.unconstrained_cost, "unconstrained_score": self.unconstrained_score,
                "binding": self.binding, "max_skips": self.max_skips, "capped": self.capped}


def derive_genotype_under_budget(
    weights_normal: Any,
    weights_reduce: Any,
    costs: DartsCnnCellCosts,
    budget: float,
    primitives: Sequence[str] = CNN_PRIMITIVES,
    steps: int = 4,
    multiplier: int = 4,
    name: str | None = None,
    max_skips: int | None = None,
) -> BudgetedCnnGenotype:
    """The highest-scoring genotype whose cost is <= budget and, given max_skips, whose normal cell holds at
    most that many skip connections (ConfigError naming the cheapest such cost when none fits).

    weights_*: final per-edge op weights [edges, primitives] (after softmax and any edge weighting), not logits.
    budget may be math.inf (no budget: the skip cap alone).
    """
    w_n = _weights(weights_normal, "normal", steps, primitives)
    w_r = _weights(weights_reduce, "reduce", steps, primitives)
    c_n = _weights(costs.normal, "normal cost", steps, primitives)
    c_r = _weights(costs.reduce, "reduce cost", steps, primitives)
    if multiplier > steps or multiplier < 1:
        raise GenotypeError(f"multiplier must be in 1..steps ({steps}), got {multiplier}")
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or not budget > 0:
        raise ConfigError(f"the cost budget must be a positive number, got {budget!r}")
    if max_skips is not None and (isinstance(max_skips, bool) or not isinstance(max_skips, int) or max_skips < 0):
        raise ConfigError(f"the skip cap must be an integer >= 0, got {max_skips!r}")
    columns = [k for k, p in enumerate(primitives) if p != NONE_OP]
    if not columns:
        raise GenotypeError("derivation needs at least one primitive other than 'none'")
    scores = rows_per_node(w_n, steps) + rows_per_node(w_r, steps)
    node_costs = rows_per_node(c_n, steps) + rows_per_node(c_r, steps)

    counts = None if max_skips is None else _skip_counts(primitives, steps)
    free = best_unconstrained(scores, node_costs, columns)
    free_cost = costs.fixed + free.cost
    free_skips = 0 if counts is None else sum(int(k[n.inputs, n.columns].sum()) for n, k in zip(free.nodes, counts))
    if free_cost <= budget and (max_skips is None or free_skips <= max_skips):
        chosen = free
    else:
        found = solve_cell(scores, node_costs, columns, budget - costs.fixed, counts, max_skips)
        if found is None:
            raise ConfigError(_infeasible(costs, budget, node_costs, columns, counts, max_skips))
        chosen = found
    concat = tuple(range(2 + steps - multiplier, 2 + steps))
    genotype = _genotype(chosen, scores, primitives, steps, concat, name)
    unconstrained = _genotype(free, scores, primitives, steps, concat, name)
    return BudgetedCnnGenotype(genotype, chosen.score, costs.fixed + chosen.cost, unconstrained, free.score,
                               free_cost, float(budget), costs.metric, max_skips)


def _skip_counts(primitives: Sequence[str], steps: int) -> list[np.ndarray]:
    """Per node (normal then reduce): 1 at skip_connect on every input of a normal node, else 0."""
    out = []
    for t in range(2 * steps):
        k = np.zeros((2 + t % steps, len(primitives)), dtype=np.int64)
        if t < steps and SKIP_OP in primitives:
            k[:, list(primitives).index(SKIP_OP)] = 1
        out.append(k)
    return out


def _infeasible(costs: DartsCnnCellCosts, budget: float, node_costs: list[np.ndarray], columns: list[int],
                counts: list[np.ndarray] | None, max_skips: int | None) -> str:
    """The one-line reason no genotype fits, naming the cheapest cost this space allows (under the cap too)."""
    unit = COST_UNITS.get(costs.metric, costs.metric)
    if counts is None:
        cheapest = cheapest_cost(node_costs, columns)
        return (f"no genotype fits the {costs.metric} budget {_fmt(budget)} {unit}: the cheapest one this space "
                f"and network allow costs {_fmt(costs.fixed + cheapest)} {unit}")
    # The cheapest genotype under the cap: the same knapsack with score = -cost and no budget.
    least = solve_cell([-c for c in node_costs], node_costs, columns, math.inf, counts, max_skips)
    cap = f"at most {max_skips} skip connection(s) in the normal cell"
    if least is None:
        return f"no genotype of this space has {cap}"
    return (f"no genotype with {cap} fits the {costs.metric} budget {_fmt(budget)} {unit}: the cheapest one "
            f"costs {_fmt(costs.fixed + least.cost)} {unit}")


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
