"""Exact budgeted cell choice: per node two distinct inputs and an op on each, max total score under a cost budget.

Design note (quoted by the budgeted derivations of darts_cnn and autodeeplab):

Problem. A cell has nodes t = 0..T-1; node t reads inputs 0..n_t-1. An option of node t is a pair of
distinct inputs i < j and a column (op) on each, with score s[i, a] + s[j, b] and cost c[i, a] + c[j, b].
Pick one option per node to maximise the total score subject to total cost <= budget: a multiple-choice
knapsack (scores and costs are additive, so the problem decomposes over nodes).

Method. Pareto-frontier dynamic programme over the nodes. Each node's options are first reduced to its
own non-dominated set; then the frontier of partial solutions (nodes 0..t) is extended by node t + 1's
options and filtered back to its non-dominated set (no other partial is as cheap and better). Partials
are dropped when (a) even the cheapest completion exceeds the budget, or (b) even the best-scoring
completion scores below a feasible solution already known (the cheapest completion of some partial).
Every step is vectorised (numpy sort + running maximum).

Exactness. Dominance and both prunings only discard partials that no completion can turn into a
better-or-equal-and-preferred solution, so the optimum is exact (up to float64 rounding of the score
sums; costs that are integers, e.g. MACs, are summed exactly). Ties are broken lexicographically: the
solution whose option sequence (node 0 first; per node the option order (i, j, a, b) ascending) is
smallest wins. Per node that is "lowest input indices first, then lowest op column" -- the DARTS rule's
own tie-breaking -- so with an unlimited budget the optimum is the per-node argmax the DARTS rule takes.

Count cap (P-DARTS's limit on skip connections). Optionally each (input, column) also carries a small
integer count (1 for a skip connection in a normal cell, else 0) and the total count of the chosen
options must stay <= max_count. The count is a second resource: dominance is then applied only between
options and partials of equal count (a cheaper, better partial with a *different* count may not complete
where the other does), so the frontier is the union of one Pareto set per count value (at most
max_count + 1 of them); partials whose count cannot come in under the cap even with the fewest-count
completion are dropped, and the score bound (b) only uses completions known to respect the cap (the
cheapest completion when its count fits, else the cheapest count-0 completion). The same exactness
argument holds within each count value, so the optimum under both constraints is exact.

Complexity. O(sum_t |F_t| * |O_t| * log) for frontier sizes |F_t| (bounded by the number of distinct
partial costs, times max_count + 1 with a cap) and non-dominated options |O_t| (at most C(n_t, 2) *
ops^2 before reduction). For the DARTS CNN space (2 x 4 nodes, 7 ops) this is milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

_SLACK = 1e-9  # relative slack on the score bound, so float rounding never prunes an optimal partial


@dataclass(frozen=True)
class NodeChoice:
    """One node's option: two distinct inputs (ascending) and the column (op) chosen on each."""

    inputs: tuple[int, int]
    columns: tuple[int, int]


@dataclass(frozen=True)
class CellChoice:
    """The chosen option of every node, with its total score and cost."""

    nodes: tuple[NodeChoice, ...]
    score: float
    cost: float


@dataclass(frozen=True)
class _Options:
    """All options of one node in tie-break order (index = rank), with their score and cost."""

    score: np.ndarray
    cost: np.ndarray
    i: np.ndarray
    j: np.ndarray
    a: np.ndarray
    b: np.ndarray
    count: np.ndarray

    def choice(self, k: int) -> NodeChoice:
        return NodeChoice((int(self.i[k]), int(self.j[k])), (int(self.a[k]), int(self.b[k])))


def _node_options(score: np.ndarray, cost: np.ndarray, columns: np.ndarray,
                  count: np.ndarray | None = None) -> _Options:
    """Options (i < j, a, b) ordered by (i, j, a, b): the tie-break order."""
    n = score.shape[0]
    pi, pj = np.triu_indices(n, k=1)  # row-major: (0,1), (0,2), ..., (1,2), ... i.e. ascending (i, j)
    m = len(columns)
    ia, ib = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    ia, ib = ia.ravel(), ib.ravel()
    s = score[:, columns]
    c = cost[:, columns]
    I = np.repeat(pi, m * m)
    J = np.repeat(pj, m * m)
    A = np.tile(ia, len(pi))
    B = np.tile(ib, len(pi))
    k = np.zeros(score.shape, dtype=np.int64) if count is None else np.asarray(count, dtype=np.int64)[:, columns]
    return _Options(s[I, A] + s[J, B], c[I, A] + c[J, B], I, J, columns[A], columns[B], k[I, A] + k[J, B])


def _pareto(cost: np.ndarray, score: np.ndarray, lex: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated entries, in ascending cost (and ascending score) order.

    b is dominated when some a has cost_a <= cost_b and (score_a > score_b, or equal score and lex_a < lex_b).
    """
    order = np.lexsort((lex, -score, cost))  # cost asc, then score desc, then lex asc
    quality = np.empty(len(score), dtype=np.int64)
    quality[np.lexsort((-lex, score))] = np.arange(len(score))  # higher = better (score, then smaller lex)
    q = quality[order]
    return order[q == np.maximum.accumulate(q)]


def _pareto_by_count(cost: np.ndarray, score: np.ndarray, lex: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Indices of the entries no entry of the same count dominates (see _pareto)."""
    values = np.unique(count)
    if len(values) <= 1:
        return _pareto(cost, score, lex)
    parts = []
    for v in values:
        idx = np.flatnonzero(count == v)
        parts.append(idx[_pareto(cost[idx], score[idx], lex[idx])])
    return np.concatenate(parts)


def _suffix(values: list[float]) -> np.ndarray:
    """Per node t: the sum of values over nodes t+1..T-1."""
    return np.concatenate([np.cumsum(values[::-1])[::-1][1:], [0.0]])


def solve_cell(scores: Sequence[np.ndarray], costs: Sequence[np.ndarray], columns: Sequence[int],
               budget: float, counts: Sequence[np.ndarray] | None = None,
               max_count: int | None = None) -> CellChoice | None:
    """The best-scoring choice of every node with total cost <= budget (None when none fits); see the module note.

    scores[t], costs[t]: [inputs of node t, all columns] arrays; only `columns` (ascending) may be chosen.
    counts[t] (optional, same shape, small non-negative integers) with max_count: the chosen entries'
    counts must also sum to <= max_count.
    """
    cols = np.asarray(sorted(columns), dtype=np.int64)
    if len(scores) != len(costs) or not len(scores) or not len(cols):
        raise ValueError("solve_cell needs at least one node and one column, and one cost array per score array")
    if (counts is None) != (max_count is None) or (counts is not None and len(counts) != len(scores)):
        raise ValueError("solve_cell takes counts (one array per node) and max_count together")
    options = []
    for t, (s, c) in enumerate(zip(scores, costs)):
        s, c = np.asarray(s, dtype=np.float64), np.asarray(c, dtype=np.float64)
        if s.shape != c.shape or s.ndim != 2 or s.shape[0] < 2:
            raise ValueError(f"node score/cost arrays must be equal [inputs >= 2, columns], got {s.shape}, {c.shape}")
        o = _node_options(s, c, cols, None if counts is None else counts[t])
        keep = _pareto_by_count(o.cost, o.score, np.arange(len(o.score)), o.count)
        options.append((o, keep))
    cap = np.inf if max_count is None else float(max_count)
    bounds = _Bounds(options)
    if bounds.total_cost > budget or bounds.total_count > cap:
        return None

    f_cost, f_score, f_count = np.zeros(1), np.zeros(1), np.zeros(1, dtype=np.int64)
    f_rank = np.zeros(1, dtype=np.int64)
    trail: list[tuple[np.ndarray, np.ndarray]] = []
    for t, (o, keep) in enumerate(options):
        cost = (f_cost[:, None] + o.cost[keep][None, :]).ravel()
        score = (f_score[:, None] + o.score[keep][None, :]).ravel()
        count = (f_count[:, None] + o.count[keep][None, :]).ravel()
        lex = (f_rank[:, None] * len(o.score) + keep[None, :]).ravel()
        parent = np.repeat(np.arange(len(f_cost)), len(keep))
        option = np.tile(keep, len(f_cost))
        ok = (cost + bounds.cost[t] <= budget) & (count + bounds.count[t] <= cap)
        known = bounds.known_feasible(t, cost[ok], score[ok], count[ok], budget, cap)
        if known is not None:  # a feasible complete solution's score: partials that cannot reach it go
            ok &= score + bounds.best[t] >= known - _SLACK * (abs(known) + 1.0)
        sel = np.flatnonzero(ok)
        sel = sel[_pareto_by_count(cost[sel], score[sel], lex[sel], count[sel])]
        if not len(sel):  # with a cap, the cost and count bounds can each hold while no completion meets both
            return None
        f_cost, f_score, f_count = cost[sel], score[sel], count[sel]
        f_rank = np.empty(len(sel), dtype=np.int64)
        f_rank[np.argsort(lex[sel], kind="stable")] = np.arange(len(sel))
        trail.append((parent[sel], option[sel]))
    k = int(np.lexsort((f_rank, -f_score))[0])  # the best score, then the smallest option sequence
    best_score, best_cost = float(f_score[k]), float(f_cost[k])
    picks = []
    for (parent, option), (o, _) in zip(reversed(trail), reversed(options)):
        picks.append(o.choice(int(option[k])))
        k = int(parent[k])
    return CellChoice(tuple(reversed(picks)), best_score, best_cost)


class _Bounds:
    """Suffix bounds over nodes t+1..T-1 of the kept options: what any completion of a partial can reach."""

    def __init__(self, options: list[tuple[_Options, np.ndarray]]):
        mins, cheap_score, cheap_count, maxs, fewest = [], [], [], [], []
        zero_cost, zero_score = [], []
        for o, k in options:
            c, s, n = o.cost[k], o.score[k], o.count[k]
            cheapest = np.flatnonzero(c == c.min())
            pick = cheapest[np.argmax(s[cheapest])]
            mins.append(float(c[pick]))
            cheap_score.append(float(s[pick]))
            cheap_count.append(float(n[pick]))
            maxs.append(float(s.max()))
            fewest.append(float(n.min()))
            zero = np.flatnonzero(n == 0)  # the cheapest count-0 option (best score among equally cheap)
            if len(zero):
                z = zero[c[zero] == c[zero].min()]
                zero_cost.append(float(c[z[0]]))
                zero_score.append(float(s[z].max()))
            else:
                zero_cost.append(np.inf)
                zero_score.append(-np.inf)
        self.total_cost, self.total_count = sum(mins), sum(fewest)  # the cheapest and fewest-count choices
        self.cost, self.cheap, self.cheap_count = _suffix(mins), _suffix(cheap_score), _suffix(cheap_count)
        self.best, self.count = _suffix(maxs), _suffix(fewest)
        self.zero_cost, self.zero_score = _suffix(zero_cost), _suffix(zero_score)

    def known_feasible(self, t: int, cost: np.ndarray, score: np.ndarray, count: np.ndarray, budget: float,
                       cap: float) -> float | None:
        """The best score of a complete solution known to fit, among the partials' cheapest completions."""
        known = -np.inf
        fits = (cost + self.cost[t] <= budget) & (count + self.cheap_count[t] <= cap)
        if fits.any():
            known = float((score[fits] + self.cheap[t]).max())
        fits = (cost + self.zero_cost[t] <= budget) & (count <= cap)
        if fits.any() and np.isfinite(self.zero_score[t]):
            known = max(known, float((score[fits] + self.zero_score[t]).max()))
        return known if np.isfinite(known) else None


def best_unconstrained(scores: Sequence[np.ndarray], costs: Sequence[np.ndarray], columns: Sequence[int]) -> CellChoice:
    """The per-node best option (same tie-break as solve_cell), i.e. the optimum without a budget."""
    cols = np.asarray(sorted(columns), dtype=np.int64)
    picks, total_s, total_c = [], 0.0, 0.0
    for s, c in zip(scores, costs):
        o = _node_options(np.asarray(s, dtype=np.float64), np.asarray(c, dtype=np.float64), cols)
        k = int(np.argmax(o.score))  # first maximum: the lowest rank among ties
        picks.append(o.choice(k))
        total_s += float(o.score[k])
        total_c += float(o.cost[k])
    return CellChoice(tuple(picks), total_s, total_c)


def cheapest_cost(costs: Sequence[np.ndarray], columns: Sequence[int]) -> float:
    """The lowest total cost any choice reaches (each node: its two cheapest distinct inputs)."""
    cols = np.asarray(sorted(columns), dtype=np.int64)
    total = 0.0
    for c in costs:
        best = np.sort(np.asarray(c, dtype=np.float64)[:, cols].min(axis=1))
        total += float(best[0] + best[1])
    return total


def rows_per_node(matrix: np.ndarray, nodes: int) -> list[np.ndarray]:
    """A cell's per-edge rows split by node: node i reads the 2 + i edges that follow node i - 1's."""
    out, start = [], 0
    for i in range(nodes):
        out.append(matrix[start:start + 2 + i])
        start += 2 + i
    return out
