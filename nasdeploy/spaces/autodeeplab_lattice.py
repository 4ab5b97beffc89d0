"""The Auto-DeepLab network-level lattice: which nodes and transitions exist (numpy only, shared by supernet and decode).

Layer l = 0 is the stride-4 stem node; layer l >= 1 has nodes at levels j = 0..3 (strides 4, 8, 16, 32)
with j <= l. The transition out of (l, j) in direction d (0: finer, 1: same, 2: coarser) goes to level
j + d - 1 of layer l + 1.
"""

from __future__ import annotations

import numpy as np

from nasdeploy.genotypes.autodeeplab import NUM_LEVELS

DIRECTIONS = ("finer", "same", "coarser")


def node_exists(layer: int, level: int, num_levels: int = NUM_LEVELS) -> bool:
    """Whether the lattice has a node at (layer, level): reachable from the stride-4 stem node."""
    return 0 <= level < num_levels and level <= layer


def transition_mask(layers: int, num_levels: int = NUM_LEVELS) -> np.ndarray:
    """[layers, levels, 3] bool: the transition out of node (l, j) towards level j + d - 1 of layer l + 1 exists."""
    mask = np.zeros((layers, num_levels, 3), dtype=bool)
    for l in range(layers):
        for j in range(num_levels):
            for d in range(3):
                mask[l, j, d] = node_exists(l, j, num_levels) and node_exists(l + 1, j + d - 1, num_levels)
    return mask
