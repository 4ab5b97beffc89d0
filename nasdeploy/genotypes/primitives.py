"""Names of the candidate operations of each search space (names only: no model code here)."""

from __future__ import annotations

# DARTS CNN search space, in the reference order: the index order fixes alpha columns and tie-breaking.
CNN_PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

# Ops that appear only in published genotypes of other methods (NASNet, AmoebaNet, PNAS).
CNN_EXTRA_OPS: tuple[str, ...] = ("sep_conv_7x7", "conv_7x1_1x7")

# Every op a static CNN cell may use ("none" is search-only: a derived cell never keeps it).
CNN_CELL_OPS: tuple[str, ...] = tuple(p for p in CNN_PRIMITIVES if p != "none") + CNN_EXTRA_OPS

# DARTS recurrent search space.
RNN_PRIMITIVES: tuple[str, ...] = ("none", "tanh", "relu", "sigmoid", "identity")
RNN_CELL_OPS: tuple[str, ...] = tuple(p for p in RNN_PRIMITIVES if p != "none")
