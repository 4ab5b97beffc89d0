"""The terms of a fused mixed node: what each weighted summand is computed from."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class TermKind(IntEnum):
    """How a term's value is obtained (the order matches TermKind in csrc/mixed_node.h)."""

    RAW = 0  # y = z (computed outside)
    BATCH_NORM = 1  # y = BN(z), batch statistics, no affine
    MAX_POOL_BN = 2  # y = BN(maxpool3x3(x_edge))
    AVG_POOL_BN = 3  # y = BN(avgpool3x3(x_edge)), count_include_pad=False
    IDENTITY = 4  # y = x_edge (stride 1)


MAX_EDGES = 8  # kMaxEdges in csrc/mixed_node.h: the kernel arguments are a fixed-size struct
MAX_TERMS = 48  # kMaxTerms

Z_KINDS = (TermKind.RAW, TermKind.BATCH_NORM)
STAT_KINDS = (TermKind.BATCH_NORM, TermKind.MAX_POOL_BN, TermKind.AVG_POOL_BN)


@dataclass(frozen=True)
class Term:
    """One weighted summand: its kind, the edge it reads and its flat index into the weights."""

    kind: TermKind
    edge: int
    wcol: int
