"""The Auto-DeepLab genotype kind: one searched cell plus the network path through resolutions.

Cell indices follow the CNN genotype convention: input 0 is H^{l-2}, input 1 is H^{l-1}, and block i
(0-based) is state 2 + i. Every block takes two (op, input) pairs; the cell output concatenates all
blocks (as in the paper and the released model). The path holds one stride level per cell layer:
0 = stride 4, 1 = 8, 2 = 16, 3 = 32; it starts next to the stride-4 stem and moves at most one level
per layer. No model code here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import comb, prod
from typing import Any, ClassVar, Sequence

from nasdeploy.errors import GenotypeError
from nasdeploy.genotypes.model import Edge
from nasdeploy.genotypes.validate import _check_edge_shape, check_op

# Auto-DeepLab cell search space, in alpha column order (index order fixes tie-breaking).
# "atrous_conv_kxk" is the released model's DENSE kxk conv with rate 2 (not DARTS's depthwise dil_conv).
AUTODEEPLAB_PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "atrous_conv_3x3",
    "atrous_conv_5x5",
)
AUTODEEPLAB_CELL_OPS: tuple[str, ...] = tuple(p for p in AUTODEEPLAB_PRIMITIVES if p != "none")

NUM_LEVELS = 4  # strides 4, 8, 16, 32
LEVEL_STRIDES: tuple[int, ...] = (4, 8, 16, 32)


@dataclass(frozen=True)
class AutoDeepLabGenotype:
    """An Auto-DeepLab architecture: a cell (two (op, input) pairs per block) and a level per layer."""

    cell: tuple[Edge, ...]
    path: tuple[int, ...]
    name: str | None = field(default=None, compare=False)

    kind: ClassVar[str] = "autodeeplab"

    @property
    def blocks(self) -> int:
        """Number of blocks of the cell."""
        return len(self.cell) // 2

    @property
    def layers(self) -> int:
        """Number of cell layers on the path."""
        return len(self.path)

    @property
    def strides(self) -> tuple[int, ...]:
        """Output stride of each layer on the path."""
        return tuple(LEVEL_STRIDES[j] for j in self.path)


def validate_autodeeplab_path(path: Sequence[object], num_levels: int = NUM_LEVELS) -> tuple[int, ...]:
    """Check a network path: integer levels in range, first layer at level 0 or 1, steps of at most one."""
    if len(path) == 0:
        raise GenotypeError("autodeeplab path: is empty; it needs one level per layer")
    levels = []
    for layer, level in enumerate(path):
        if isinstance(level, bool) or not isinstance(level, int):
            raise GenotypeError(f"autodeeplab path layer {layer + 1}: level {level!r} is not an integer")
        if not 0 <= level < num_levels:
            raise GenotypeError(
                f"autodeeplab path layer {layer + 1}: level {level} is out of range 0..{num_levels - 1} (strides 4..32)"
            )
        previous = 0 if layer == 0 else levels[-1]
        if abs(level - previous) > 1:
            where = "the stride-4 stem" if layer == 0 else f"level {previous} at layer {layer}"
            raise GenotypeError(
                f"autodeeplab path layer {layer + 1}: jumps from {where} to level {level}; a layer moves at most one level"
            )
        levels.append(level)
    return tuple(levels)


def validate_autodeeplab_cell(cell: Sequence[object]) -> tuple[Edge, ...]:
    """Check a cell: two pairs per block, known non-'none' ops, inputs from earlier states only."""
    if len(cell) == 0:
        raise GenotypeError("autodeeplab cell: has no (op, input) pairs")
    if len(cell) % 2 != 0:
        raise GenotypeError(f"autodeeplab cell: odd number of (op, input) pairs ({len(cell)}); each block takes two")
    edges = []
    for k, raw in enumerate(cell):
        block = k // 2
        op, index = _check_edge_shape(f"autodeeplab cell pair {k}", raw)
        where = f"autodeeplab cell block {block + 2} (pair {k})"
        check_op(where, op, AUTODEEPLAB_CELL_OPS)
        if not 0 <= index < block + 2:
            raise GenotypeError(
                f"{where}: input index {index} is not an earlier state; block {block + 2} can read states 0..{block + 1}"
            )
        edges.append((op, index))
    return tuple(edges)


def validate_autodeeplab_genotype(genotype: AutoDeepLabGenotype) -> AutoDeepLabGenotype:
    """Validate cell and path; return the genotype unchanged."""
    validate_autodeeplab_cell(genotype.cell)
    validate_autodeeplab_path(genotype.path)
    return genotype


def make_autodeeplab_genotype(cell: Sequence[Sequence[Any]], path: Sequence[int], name: str | None = None) -> AutoDeepLabGenotype:
    """Build and validate a genotype from plain lists."""
    edges = validate_autodeeplab_cell([tuple(e) if isinstance(e, list) else e for e in cell])
    return AutoDeepLabGenotype(edges, validate_autodeeplab_path(list(path)), name=name)


def _autodeeplab_to_dict(g: AutoDeepLabGenotype) -> dict[str, Any]:
    return {"cell": [[op, index] for op, index in g.cell], "path": list(g.path)}


def _autodeeplab_from_dict(data: dict[str, Any], name: str | None) -> AutoDeepLabGenotype:
    for key in ("cell", "path"):
        if key not in data:
            raise GenotypeError(f"autodeeplab genotype: missing field '{key}'")
    cell, path = data["cell"], data["path"]
    if not isinstance(cell, list):
        raise GenotypeError(f"autodeeplab cell: expected a list of [op_name, input_index] pairs, got {type(cell).__name__}")
    if not isinstance(path, list):
        raise GenotypeError(f"autodeeplab path: expected a list of levels, got {type(path).__name__}")
    for k, pair in enumerate(cell):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise GenotypeError(f"autodeeplab cell pair {k}: expected [op_name, input_index], got {pair!r}")
    return make_autodeeplab_genotype(cell, path, name=name)


def count_network_paths(layers: int, num_levels: int = NUM_LEVELS) -> int:
    """Number of valid paths of `layers` layers starting from the stride-4 stem (dynamic programme)."""
    counts = [1] + [0] * (num_levels - 1)
    for _ in range(layers):
        counts = [sum(counts[k] for k in (j - 1, j, j + 1) if 0 <= k < num_levels) for j in range(num_levels)]
    return sum(counts)


def count_cells(blocks: int = 5, num_ops: int = len(AUTODEEPLAB_PRIMITIVES)) -> int:
    """Size of the cell space as the paper counts it: per block, (inputs x ops)^2 ordered choices."""
    return prod(((2 + i) * num_ops) ** 2 for i in range(blocks))


def count_distinct_cells(blocks: int = 5, num_ops: int = len(AUTODEEPLAB_CELL_OPS)) -> int:
    """Cells as decoding produces them: two distinct inputs per block, one non-zero op on each."""
    return prod(comb(2 + i, 2) * num_ops**2 for i in range(blocks))


# The published architecture (autodeeplab.md; released model `hnasnet`): H^{l-2} = 0, H^{l-1} = 1.
AUTODEEPLAB = AutoDeepLabGenotype(
    cell=(
        ("atrous_conv_5x5", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0), ("atrous_conv_3x3", 1),
        ("sep_conv_3x3", 3), ("sep_conv_3x3", 0),
        ("sep_conv_5x5", 4), ("sep_conv_5x5", 2),
        ("sep_conv_5x5", 3), ("atrous_conv_5x5", 5),
    ),
    path=(0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1),
    name="AutoDeepLab",
)  # fmt: skip
validate_autodeeplab_genotype(AUTODEEPLAB)

# Cityscapes costs at 1024x2048, 19 classes. "published": the paper's table (Auto-DeepLab-S/M/L);
# "params"/"macs": this implementation (dense ASPP and decoder, FlopCounterMode conv/matmul MACs), which
# a test recomputes. Parameter counts agree with the published ones to the reported precision.
AUTODEEPLAB_PUBLISHED_COSTS: dict[str, dict[str, dict[str, float]]] = {
    "segmentation": {
        "S": {"filter_multiplier": 20, "params": 10_147_427, "macs": 315_137_185_920,
              "published_params": 10.15e6, "published_macs": 333.25e9, "published_miou": 79.74},
        "M": {"filter_multiplier": 32, "params": 21_622_451, "macs": 431_003_281_920,
              "published_params": 21.62e6, "published_macs": 460.93e9, "published_miou": 80.04},
        "L": {"filter_multiplier": 48, "params": 44_424_691, "macs": 647_080_717_056,
              "published_params": 44.42e6, "published_macs": 695.03e9, "published_miou": 80.33},
    }
}
