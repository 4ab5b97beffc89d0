"""Decoding an Auto-DeepLab search into a genotype: the cell from alpha, the network path from beta (pure numpy).

Cell: for each block keep the two predecessors with the largest non-'none' op probability, and on each
the argmax op excluding 'none'. Path: Viterbi over Eq. 7 transition probabilities, i.e. the path from
the stride-4 stem with the largest product of probabilities (computed as a sum of logs).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from nasdeploy.errors import ConfigError
from nasdeploy.genotypes.autodeeplab import AUTODEEPLAB_PRIMITIVES, AutoDeepLabGenotype, make_autodeeplab_genotype
from nasdeploy.spaces.autodeeplab_lattice import transition_mask


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax."""
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def beta_probabilities(betas: np.ndarray) -> np.ndarray:
    """Eq. 7 in numpy: softmax of beta logits over each node's existing outgoing transitions."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 3 or betas.shape[2] != 3:
        raise ConfigError(f"beta must have shape [layers, levels, 3], got {betas.shape}")
    mask = transition_mask(betas.shape[0], betas.shape[1])
    logits = np.where(mask, betas, -np.inf)
    logits = np.where(mask.any(-1, keepdims=True), logits, 0.0)
    return softmax(logits) * mask


def decode_cell(alphas: np.ndarray, blocks: int, primitives: Sequence[str] = AUTODEEPLAB_PRIMITIVES,
                from_logits: bool = True) -> tuple[tuple[str, int], ...]:
    """Top-2 predecessors per block by max non-'none' probability, argmax non-'none' op on each."""
    weights = softmax(np.asarray(alphas, dtype=np.float64)) if from_logits else np.asarray(alphas, dtype=np.float64)
    expected = sum(2 + i for i in range(blocks))
    if weights.shape != (expected, len(primitives)):
        raise ConfigError(f"alpha must have shape [{expected}, {len(primitives)}] for {blocks} blocks, got {weights.shape}")
    keep = np.array([p != "none" for p in primitives])
    edges: list[tuple[str, int]] = []
    offset = 0
    for i in range(blocks):
        w = weights[offset:offset + 2 + i][:, keep]
        names = [p for p in primitives if p != "none"]
        strength = w.max(axis=1)
        # Stable sort: ties go to the earlier input.
        top = sorted(np.argsort(-strength, kind="stable")[:2])
        edges.extend((names[int(np.argmax(w[k]))], int(k)) for k in top)
        offset += 2 + i
    return tuple(edges)


def viterbi_path(probabilities: np.ndarray) -> tuple[tuple[int, ...], float]:
    """The path (level per layer 1..L) maximising the product of transition probabilities, and its log-probability."""
    p = np.asarray(probabilities, dtype=np.float64)
    layers, levels, _ = p.shape
    with np.errstate(divide="ignore"):
        logp = np.log(p)
    score = np.full(levels, -np.inf)
    score[0] = 0.0
    back = np.zeros((layers, levels), dtype=np.int64)
    for l in range(layers):
        new = np.full(levels, -np.inf)
        for target in range(levels):
            for d in range(3):
                src = target - d + 1
                if 0 <= src < levels and score[src] + logp[l, src, d] > new[target]:
                    new[target] = score[src] + logp[l, src, d]
                    back[l, target] = src
        score = new
    end = int(np.argmax(score))
    if not np.isfinite(score[end]):
        raise ConfigError("beta gives every path zero probability; cannot decode a network path")
    path = [end]
    for l in range(layers - 1, 0, -1):
        path.append(int(back[l, path[-1]]))
    return tuple(reversed(path)), float(score[end])


def path_log_probability(path: Sequence[int], probabilities: np.ndarray) -> float:
    """log of the product of transition probabilities along `path` (starting at the stride-4 stem)."""
    p = np.asarray(probabilities, dtype=np.float64)
    total, level = 0.0, 0
    for l, target in enumerate(path):
        d = target - level + 1
        if not 0 <= d < 3:
            return float("-inf")
        total += float(np.log(p[l, level, d])) if p[l, level, d] > 0 else float("-inf")
        level = target
    return total


def decode_genotype(alphas: np.ndarray, betas: np.ndarray, blocks: int, name: str | None = None) -> AutoDeepLabGenotype:
    """The Auto-DeepLab genotype (cell + Viterbi path) from raw alpha and beta logits."""
    cell = decode_cell(alphas, blocks)
    path, _ = viterbi_path(beta_probabilities(betas))
    return make_autodeeplab_genotype(cell, path, name=name)
