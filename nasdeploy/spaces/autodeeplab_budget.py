"""Auto-DeepLab decoding under a cost budget: the best (cell, path) whose table cost fits (exact).

Design note (for the README):

Score. log-likelihood of the architecture under the search's distributions: the sum over the cell's kept
edges of log softmax(alpha)[edge, op] plus the path's log-probability under beta's Eq. 7 transition
probabilities (the Viterbi score). Both parts are maximised separately by today's decoding (per block
the two inputs of largest best-non-'none' probability -- log is monotone -- and the Viterbi path), so
when that genotype fits the budget (or without one) it is returned unchanged, tie-breaking included.
Logs (not the DARTS CNN budget's sum of weights) put cell and path on one scale: the sum is the
log-probability of the pair when the cell's edges and the path's moves are drawn independently.

Cost. spaces/autodeeplab_cost_table.py: a path runs its cells in known contexts, so for a fixed path
cost = fixed(path) + sum over kept (edge, op) of G_path[edge, op], G_path = sum over contexts of
(cells of the path in that context) x cell_ops[context].

Method (exact). Paths that run the same number of cells in every context and have the same fixed cost
cost the same for every cell: a *group*. 1) Groups are produced lazily in decreasing score of their best
path by a best-first (A*) search over (layer, lattice state) whose heuristic is the exact best completion
score (a backward Viterbi pass); partial paths that cannot fit even with the cheapest cell of every
context (a lower bound on the cell's cost, computed by a backward min-cost pass) are never expanded.
2) Branch and bound over the groups: a group's best total is at most its path score + the unconstrained
best cell score, so the scan stops once that cannot beat the best found; otherwise the group's cell is
solved exactly under the remaining budget (budget - fixed) by the Pareto-frontier multiple-choice
knapsack of spaces.cell_knapsack over the blocks. Exact up to float64 rounding of score sums (MACs are
summed exactly). Ties under a binding budget: the earlier group in (path score desc, path asc) order,
then the knapsack's tie-break. Complexity: at most one knapsack (milliseconds) per group the bounds do
not skip; groups <= paths (12 layers: 75,025 paths, about 51,500 groups at 1024x2048). Measured on the
12-layer Auto-DeepLab-S network: tens of milliseconds for typical budgets, about 2 s at worst seen (flat
beta, budget within 5% of the cheapest network); an infeasible budget is refused after one backward
pass, its message naming the cheapest cost (about 1 s).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from nasdeploy.errors import ConfigError
from nasdeploy.genotypes.autodeeplab import AUTODEEPLAB_PRIMITIVES, AutoDeepLabGenotype, make_autodeeplab_genotype
from nasdeploy.spaces.autodeeplab_cost_table import NONE_OP, AutoDeepLabCostTable
from nasdeploy.spaces.autodeeplab_decode import (beta_probabilities, decode_cell, path_log_probability, softmax,
                                                 viterbi_path)
from nasdeploy.spaces.cell_knapsack import CellChoice, best_unconstrained, cheapest_cost, rows_per_node, solve_cell


@dataclass(frozen=True)
class BudgetedAutoDeepLabGenotype:
    """A genotype decoded under a budget, next to the unconstrained (decode_genotype) one."""

    genotype: AutoDeepLabGenotype
    score: float  # cell log-probability + path log-probability
    cost: float
    unconstrained: AutoDeepLabGenotype
    unconstrained_score: float
    unconstrained_cost: float
    budget: float
    metric: str

    @property
    def binding(self) -> bool:
        """True when the unconstrained genotype is over the budget, so the budget changed the result."""
        return self.unconstrained_cost > self.budget

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (for logs and the report)."""
        return {"metric": self.metric, "budget": self.budget, "cost": self.cost, "score": self.score,
                "unconstrained_cost": self.unconstrained_cost, "unconstrained_score": self.unconstrained_score,
                "binding": self.binding}


@dataclass(frozen=True)
class PathGroup:
    """Paths that cost the same for every cell: context counts, fixed cost, and the best path's score."""

    counts: tuple[int, ...]
    fixed: float
    score: float
    path: tuple[int, ...]


def path_groups(table: AutoDeepLabCostTable, log_probabilities: np.ndarray) -> list[PathGroup]:
    """Every distinct (context counts, fixed cost) of a path with nonzero probability, with its best path."""
    logp = np.asarray(log_probabilities, dtype=np.float64)
    zero = (0,) * len(table.contexts)
    layer: dict[tuple[Any, ...], tuple[float, tuple[int, ...]]] = {(0, zero, table.stem): (0.0, ())}
    for l in range(table.layers):
        nxt_layer: dict[tuple[Any, ...], tuple[float, tuple[int, ...]]] = {}
        for (state, counts, fixed), (score, path) in layer.items():
            for d, nxt, k, cost, lp in _moves(table, logp, l, state):
                key = (nxt, counts[:k] + (counts[k] + 1,) + counts[k + 1:], fixed + cost)
                _keep_best(nxt_layer, key, (score + lp, path + (table.levels[l + 1][nxt],)))
        layer = nxt_layer
    groups: dict[tuple[Any, ...], tuple[float, tuple[int, ...]]] = {}
    for (state, counts, fixed), best in layer.items():
        _keep_best(groups, (counts, fixed + float(table.head[state])), best)
    out = [PathGroup(counts, fixed, score, path) for (counts, fixed), (score, path) in groups.items()]
    out.sort(key=lambda g: (-g.score, g.path))
    return out


def groups_by_score(table: AutoDeepLabCostTable, log_probabilities: np.ndarray,
                    context_floor: np.ndarray | None = None, budget: float = np.inf) -> Iterator[PathGroup]:
    """Path groups lazily, in decreasing score of their best path, each group once.

    Best-first search (A* whose heuristic is the exact best-completion score of a backward Viterbi pass).
    With context_floor (a lower bound on a cell's cost in each context) partial paths whose cost, at that
    bound, cannot come in under `budget` are never extended (their groups cannot fit).
    """
    logp = np.asarray(log_probabilities, dtype=np.float64)
    floor = np.zeros(len(table.contexts)) if context_floor is None else np.asarray(context_floor, dtype=np.float64)
    score_to_go, cost_to_go = _to_go(table, logp, floor)
    zero = (0,) * len(table.contexts)
    heap: list[tuple[float, tuple[int, ...], float, int, tuple[int, ...], float, float]] = []
    if table.stem + cost_to_go[0][0] <= budget:
        heap.append((-score_to_go[0][0], (), 0.0, 0, zero, table.stem, table.stem))
    seen: set[tuple[tuple[int, ...], float]] = set()
    while heap:
        _, path, score, state, counts, fixed, low = heapq.heappop(heap)
        l = len(path)
        if l == table.layers:
            key = (counts, fixed + float(table.head[state]))
            if key not in seen:
                seen.add(key)
                yield PathGroup(counts, key[1], score, path)
            continue
        for _, nxt, k, cost, lp in _moves(table, logp, l, state):
            s, c = score + lp, low + cost + floor[k]
            if np.isfinite(s + score_to_go[l + 1][nxt]) and c + cost_to_go[l + 1][nxt] <= budget:
                heapq.heappush(heap, (-(s + score_to_go[l + 1][nxt]), path + (table.levels[l + 1][nxt],), s, nxt,
                                      counts[:k] + (counts[k] + 1,) + counts[k + 1:], fixed + cost, c))


def _to_go(table: AutoDeepLabCostTable, logp: np.ndarray,
           floor: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per layer and state: the best completion's log-probability and the cheapest completion's cost at `floor`."""
    score = [np.zeros(len(table.levels[table.layers]))]
    cost = [np.asarray(table.head, dtype=np.float64)]
    for l in range(table.layers - 1, -1, -1):
        s = np.full(len(table.levels[l]), -np.inf)
        c = np.full(len(table.levels[l]), np.inf)
        for state in range(len(s)):
            for _, nxt, k, fixed, lp in _moves(table, logp, l, state):
                s[state] = max(s[state], lp + score[0][nxt])
                c[state] = min(c[state], fixed + floor[k] + cost[0][nxt])
        score.insert(0, s)
        cost.insert(0, c)
    return score, cost


def _moves(table: AutoDeepLabCostTable, logp: np.ndarray, layer: int,
           state: int) -> Iterator[tuple[int, int, int, float, float]]:
    """(direction, next state, context, fixed cost, log-probability) of each possible move out of a state."""
    level = table.levels[layer][state]
    for d in range(3):
        nxt = int(table.next_state[layer][state, d])
        if nxt >= 0 and np.isfinite(logp[layer, level, d]):
            yield d, nxt, int(table.context[layer][state, d]), float(table.transition[layer][state, d]), float(
                logp[layer, level, d])


def _keep_best(table: dict[Any, tuple[float, tuple[int, ...]]], key: Any, cand: tuple[float, tuple[int, ...]]) -> None:
    old = table.get(key)
    if old is None or cand[0] > old[0] or (cand[0] == old[0] and cand[1] < old[1]):
        table[key] = cand


def decode_under_budget(alphas: Any, betas: Any, table: AutoDeepLabCostTable, budget: float,
                        name: str | None = None) -> BudgetedAutoDeepLabGenotype:
    """The highest-scoring (cell, path) with table cost <= budget (ConfigError naming the cheapest cost if none)."""
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or not budget > 0:
        raise ConfigError(f"the cost budget must be a positive number, got {budget!r}")
    a = _array(alphas)
    b = _array(betas)
    edges = sum(2 + i for i in range(table.blocks))
    if a.shape != (edges, len(table.primitives)):
        raise ConfigError(f"alpha must have shape [{edges}, {len(table.primitives)}] for {table.blocks} blocks, got {a.shape}")
    if b.shape[:1] != (table.layers,):
        raise ConfigError(f"beta has {b.shape[0] if b.ndim else 0} layers; the cost table {table.layers}")
    with np.errstate(divide="ignore"):
        log_w = np.log(softmax(a))
        logp = np.log(beta_probabilities(b))
    columns = [k for k, p in enumerate(table.primitives) if p != NONE_OP]
    scores = rows_per_node(log_w, table.blocks)

    free_path, free_path_score = viterbi_path(beta_probabilities(b))
    free = make_autodeeplab_genotype(decode_cell(a, table.blocks, table.primitives), free_path, name=name)
    free_cell = best_unconstrained(scores, [np.zeros_like(s) for s in scores], columns)
    free_score = free_cell.score + free_path_score
    free_cost = table.genotype_cost(free)
    if free_cost <= budget:
        return BudgetedAutoDeepLabGenotype(free, free_score, free_cost, free, free_score, free_cost, float(budget),
                                           table.metric)

    # Per context the cheapest cell there: a lower bound on a cell's cost (min of a sum >= sum of mins), exact
    # when one op is cheapest in every context (pools, for MACs). Paths that cannot fit even so are never expanded.
    context_floor = np.array([cheapest_cost(rows_per_node(ops, table.blocks), columns) for ops in table.cell_ops])
    best: tuple[float, CellChoice, PathGroup, float] | None = None
    for group in groups_by_score(table, logp, context_floor, budget):
        if best is not None and group.score + free_cell.score <= best[0]:
            break  # groups come in decreasing path score: none left can beat the best found
        costs = rows_per_node(table.cell_cost_matrix(np.asarray(group.counts)), table.blocks)
        if group.fixed + cheapest_cost(costs, columns) > budget:
            continue
        found = solve_cell(scores, costs, columns, budget - group.fixed)
        if found is not None and (best is None or group.score + found.score > best[0]):
            best = (group.score + found.score, found, group, group.fixed + found.cost)
    if best is None:
        unit = "MACs" if table.metric == "macs" else table.metric
        raise ConfigError(f"no Auto-DeepLab genotype fits the {table.metric} budget {budget:,.0f} {unit}: the cheapest "
                          f"cell and path this network allows cost {_cheapest(table, logp, context_floor, columns):,.0f} "
                          f"{unit}")
    total, choice, group, cost = best
    cell = [(table.primitives[col], src) for node in choice.nodes for src, col in zip(node.inputs, node.columns)]
    genotype = make_autodeeplab_genotype(cell, group.path, name=name)
    return BudgetedAutoDeepLabGenotype(genotype, total, float(cost), free, free_score, free_cost, float(budget),
                                       table.metric)


def _cheapest(table: AutoDeepLabCostTable, logp: np.ndarray, context_floor: np.ndarray, columns: list[int]) -> float:
    """The cheapest (cell, path) cost (for the error message): groups in order of their lower bound, until the
    bound passes the best exact cost found."""
    groups = path_groups(table, logp)
    bounds = np.array([g.fixed for g in groups]) + np.array([g.counts for g in groups], dtype=np.float64) @ context_floor
    best = np.inf
    for i in np.argsort(bounds, kind="stable"):
        if bounds[i] >= best:
            break
        g = groups[i]
        costs = rows_per_node(table.cell_cost_matrix(np.asarray(g.counts)), table.blocks)
        best = min(best, g.fixed + cheapest_cost(costs, columns))
    return float(best)


def genotype_log_score(genotype: AutoDeepLabGenotype, alphas: Any, betas: Any) -> float:
    """The decode score of a genotype: sum of log softmax(alpha) over kept edges + log P(path | beta)."""
    with np.errstate(divide="ignore"):
        log_w = np.log(softmax(_array(alphas)))
    col = {p: k for k, p in enumerate(AUTODEEPLAB_PRIMITIVES)}
    total = 0.0
    for k, (op, source) in enumerate(genotype.cell):
        total += float(log_w[sum(2 + i for i in range(k // 2)) + source, col[op]])
    return total + path_log_probability(genotype.path, beta_probabilities(_array(betas)))


def _array(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().double().numpy()
    a = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ConfigError("architecture weights contain NaN or infinite values; the search diverged")
    return a
