"""Derive a recurrent genotype from search alphas with the DARTS top-1 rule (pure Python, no torch)."""

from __future__ import annotations

import math
from typing import Any, Sequence

from nasdeploy.errors import GenotypeError
from nasdeploy.genotypes import RNN_PRIMITIVES, RecurrentGenotype, validate_recurrent_genotype


def _as_rows(alphas: Any) -> list[list[float]]:
    rows = alphas.tolist() if hasattr(alphas, "tolist") else alphas
    return [[float(v) for v in row] for row in rows]


def softmax_rows(rows: Sequence[Sequence[float]]) -> list[list[float]]:
    """Row-wise softmax (max-shifted for stability)."""
    out = []
    for row in rows:
        top = max(row)
        exps = [math.exp(v - top) for v in row]
        total = sum(exps)
        out.append([e / total for e in exps])
    return out


def derive_recurrent_genotype(alphas: Any, primitives: Sequence[str] = RNN_PRIMITIVES, *,
                              name: str | None = None) -> RecurrentGenotype:
    """Top-1 derivation: per node, the predecessor whose best non-'none' weight is largest, with that op.

    `alphas` are the raw architecture weights [num_edges, len(primitives)] (a tensor or nested lists);
    each row is softmaxed first, as in the reference. Ties go to the lower predecessor, then the lower op
    index. concat is every node 1..steps.
    """
    rows = _as_rows(alphas)
    primitives = tuple(primitives)
    if "none" not in primitives:
        raise GenotypeError("recurrent primitives must include 'none' (the reference search space does)")
    if any(len(r) != len(primitives) for r in rows):
        raise GenotypeError(f"alphas rows must have {len(primitives)} entries, one per primitive {list(primitives)}")
    steps = int((math.isqrt(8 * len(rows) + 1) - 1) // 2)
    if steps < 1 or steps * (steps + 1) // 2 != len(rows):
        raise GenotypeError(f"alphas have {len(rows)} rows, which is not 1 + 2 + ... + steps for any steps")
    none = primitives.index("none")
    candidates = [k for k in range(len(primitives)) if k != none]
    probs = softmax_rows(rows)
    genes: list[tuple[str, int]] = []
    start = 0
    for i in range(steps):
        edges = probs[start: start + i + 1]
        best_pred, best_op, best_weight = 0, candidates[0], -1.0
        for j, row in enumerate(edges):
            for k in candidates:
                if row[k] > best_weight:  # strict: earlier predecessor / lower op index wins ties
                    best_pred, best_op, best_weight = j, k, row[k]
        genes.append((primitives[best_op], best_pred))
        start += i + 1
    return validate_recurrent_genotype(RecurrentGenotype(tuple(genes), tuple(range(1, steps + 1)), name=name))
