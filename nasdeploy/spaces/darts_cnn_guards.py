"""Collapse guards of the DARTS CNN search: what they count and schedule (pure; the search loop applies them).

DARTS tends to collapse to parameter-free ops, skip connections above all (darts#92: an all-skip cell;
AutoDL-Projects#58; pdarts#21). Three published answers, each an option of search.collapse:
- DARTS- (Chu et al. 2020): an auxiliary skip on every edge whose weight decays linearly to 0, so skip
  connections need not win the softmax to carry the gradient (the supernet: spaces/darts_cnn.py, aux_skip).
  The weight of epoch e (0-based) of E is beta_0 * (1 - e / E), the linear schedule of its reference code.
- DARTS+ (Liang et al. 2019): stop the search once the derived normal cell holds 2 or more skip connections.
- P-DARTS (Chen et al. 2019): at most M = 2 skip connections in the derived normal cell (the constrained
  derivation of spaces/darts_cnn_budget.py).
Whichever guard is on, a derived normal cell with 3 or more parameter-free ops is worth a warning.
"""

from __future__ import annotations

from typing import Any

SKIP_OP = "skip_connect"
PARAMETER_FREE_OPS = frozenset({"none", "skip_connect", "max_pool_3x3", "avg_pool_3x3"})
WARN_PARAMETER_FREE = 3  # parameter-free ops in the normal cell from which the search warns


def skip_connections(genotype: Any) -> int:
    """Skip connections in the genotype's normal cell."""
    return sum(1 for op, _ in genotype.normal if op == SKIP_OP)


def parameter_free_ops(genotype: Any) -> int:
    """Parameter-free ops (skip connections, pools, none) in the genotype's normal cell."""
    return sum(1 for op, _ in genotype.normal if op in PARAMETER_FREE_OPS)


def collapse_warning(genotype: Any) -> str | None:
    """A one-line warning when the normal cell holds 3 or more parameter-free ops (None otherwise)."""
    count = parameter_free_ops(genotype)
    if count < WARN_PARAMETER_FREE:
        return None
    ops = ", ".join(sorted({op for op, _ in genotype.normal if op in PARAMETER_FREE_OPS}))
    return (f"the derived normal cell holds {count} parameter-free ops of {len(genotype.normal)} ({ops}): "
            f"a sign of DARTS's collapse (search.collapse: darts_minus, darts_plus, p_darts)")


def aux_skip_weight(initial: float, epoch: int, epochs: int) -> float:
    """DARTS-'s auxiliary skip weight during epoch `epoch` (0-based) of `epochs`: linear from initial to 0."""
    return initial * (1.0 - epoch / epochs)
