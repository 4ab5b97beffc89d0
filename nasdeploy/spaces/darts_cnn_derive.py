"""The DARTS derivation rule: from architecture weights to a discrete CNN genotype (pure, no model code)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from nasdeploy.errors import GenotypeError
from nasdeploy.genotypes import CNN_PRIMITIVES, CNNGenotype, validate_cnn_genotype

NONE_OP = "none"


def softmax_rows(alphas: Any) -> np.ndarray:
    """Row-wise softmax in float64 of a [edges, primitives] array-like (tensor, ndarray, nested lists)."""
    a = _as_array(alphas)
    shifted = a - a.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def node_softmax_rows(betas: Any, steps: int) -> np.ndarray:
    """Softmax in float64 of per-edge betas over each node's incoming edges (PC-DARTS edge normalisation)."""
    b = np.asarray(betas.detach().cpu().double().numpy() if hasattr(betas, "detach") else betas, dtype=np.float64)
    expected = sum(2 + i for i in range(steps))
    if b.shape != (expected,):
        raise GenotypeError(f"betas of shape {b.shape} do not fit {steps} steps (expected ({expected},))")
    if not np.all(np.isfinite(b)):
        raise GenotypeError("betas contain NaN or infinite values; the search diverged")
    out, start = np.empty_like(b), 0
    for i in range(steps):
        row = b[start:start + 2 + i]
        e = np.exp(row - row.max())
        out[start:start + 2 + i] = e / e.sum()
        start += 2 + i
    return out


def derive_cell(weights: np.ndarray, primitives: Sequence[str], steps: int) -> tuple[tuple[str, int], ...]:
    """Top-2 incoming edges per node by their best non-'none' weight; on each, the best non-'none' op.

    Ties go to the lower index (edges and ops alike), as in the reference implementation.
    """
    expected = sum(2 + i for i in range(steps))
    if weights.shape != (expected, len(primitives)):
        raise GenotypeError(
            f"alphas of shape {tuple(weights.shape)} do not fit {steps} steps x {len(primitives)} primitives "
            f"(expected {(expected, len(primitives))})"
        )
    candidates = [k for k, name in enumerate(primitives) if name != NONE_OP]
    if not candidates:
        raise GenotypeError("derivation needs at least one primitive other than 'none'")
    edges: list[tuple[str, int]] = []
    start = 0
    for i in range(steps):
        n = 2 + i
        rows = weights[start:start + n]
        best = [max(candidates, key=lambda k, r=r: (r[k], -k)) for r in rows]
        strength = [rows[j, best[j]] for j in range(n)]
        # Stable sort on -strength: equal strengths keep the lower input index first.
        kept = sorted(range(n), key=lambda j: -strength[j])[:2]
        for j in kept:
            edges.append((primitives[best[j]], j))
        start += n
    return tuple(edges)


def derive_genotype(
    alphas_normal: Any,
    alphas_reduce: Any,
    primitives: Sequence[str] = CNN_PRIMITIVES,
    steps: int = 4,
    multiplier: int = 4,
    name: str | None = None,
    betas_normal: Any = None,
    betas_reduce: Any = None,
) -> CNNGenotype:
    """The DARTS genotype of raw (pre-softmax) alphas; concat is the last `multiplier` nodes.

    With PC-DARTS edge normalisation (raw betas of both cell types), each edge's op weights are
    multiplied by its node-normalised beta before the edges are ranked, as PC-DARTS's genotype() does.
    """
    if multiplier > steps or multiplier < 1:
        raise GenotypeError(f"multiplier must be in 1..steps ({steps}), got {multiplier}")
    normal, reduce = edge_op_weights(alphas_normal, alphas_reduce, steps, betas_normal, betas_reduce)
    concat = tuple(range(2 + steps - multiplier, 2 + steps))
    genotype = CNNGenotype(
        normal=derive_cell(normal, primitives, steps),
        normal_concat=concat,
        reduce=derive_cell(reduce, primitives, steps),
        reduce_concat=concat,
        name=name,
    )
    validate_cnn_genotype(genotype)
    return genotype


def edge_op_weights(alphas_normal: Any, alphas_reduce: Any, steps: int, betas_normal: Any = None,
                    betas_reduce: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The final per-edge op weights (normal, reduce) the derivation ranks: softmax(alpha) per edge, times the
    node-normalised betas with PC-DARTS edge normalisation."""
    if (betas_normal is None) != (betas_reduce is None):
        raise GenotypeError("betas must be given for both cell types or for neither")
    normal, reduce = softmax_rows(alphas_normal), softmax_rows(alphas_reduce)
    if betas_normal is not None:
        normal = normal * node_softmax_rows(betas_normal, steps)[:, None]
        reduce = reduce * node_softmax_rows(betas_reduce, steps)[:, None]
    return normal, reduce


def _as_array(alphas: Any) -> np.ndarray:
    if hasattr(alphas, "detach"):
        alphas = alphas.detach().cpu().double().numpy()
    a = np.asarray(alphas, dtype=np.float64)
    if a.ndim != 2:
        raise GenotypeError(f"alphas must be a 2-D [edges, primitives] array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise GenotypeError("alphas contain NaN or infinite values; the search diverged")
    return a
