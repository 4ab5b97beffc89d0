"""Validation of genotypes with one-line errors that name the problem."""

from __future__ import annotations

import difflib
from typing import Iterable, Sequence

from nasdeploy.errors import GenotypeError
from nasdeploy.genotypes.model import CNNGenotype, Edge, RecurrentGenotype
from nasdeploy.genotypes.primitives import CNN_CELL_OPS, RNN_CELL_OPS
from nasdeploy.utils.limits import GENOTYPE_NODES, brief


def nearest_name(name: str, choices: Iterable[str]) -> str | None:
    """The closest valid name to `name`, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return matches[0] if matches else None


def _unknown_op_message(where: str, op: object, valid: Sequence[str]) -> str:
    hint = nearest_name(str(op)[:100], valid)
    did_you_mean = f"; did you mean '{hint}'?" if hint else ""
    return f"{where}: unknown op {brief(str(op))}{did_you_mean} (valid ops: {', '.join(valid)})"


def check_op(where: str, op: str, valid: Sequence[str]) -> None:
    """Raise a one-line GenotypeError unless `op` is a valid derived-cell op ('none' is search-only)."""
    if op in valid:
        return
    if op == "none":
        raise GenotypeError(f"{where}: op 'none' is search-only and cannot appear in a derived cell")
    raise GenotypeError(_unknown_op_message(where, op, valid))


def _check_edge_shape(where: str, edge: object) -> Edge:
    if (
        not isinstance(edge, (tuple, list))
        or len(edge) != 2
        or not isinstance(edge[0], str)
        or isinstance(edge[1], bool)
        or not isinstance(edge[1], int)
    ):
        raise GenotypeError(f"{where}: expected an [op_name, input_index] pair, got {brief(edge)}")
    return (edge[0], edge[1])


def validate_cnn_cell(cell_name: str, edges: Sequence[Edge], concat: Sequence[int]) -> None:
    """Check one CNN cell: even pair count, known ops, inputs from earlier states, concat of existing nodes."""
    if len(edges) == 0:
        raise GenotypeError(f"{cell_name} cell: has no (op, input) pairs")
    GENOTYPE_NODES.check(f"{cell_name} cell", len(edges) // 2)
    if len(edges) % 2 != 0:
        raise GenotypeError(
            f"{cell_name} cell: odd number of (op, input) pairs ({len(edges)}); each node takes exactly two"
        )
    for k, raw in enumerate(edges):
        node = k // 2
        op, index = _check_edge_shape(f"{cell_name} cell pair {k}", raw)
        where = f"{cell_name} cell node {node + 2} (pair {k})"
        check_op(where, op, CNN_CELL_OPS)
        if index < 0:
            raise GenotypeError(f"{where}: input index {index} is negative; inputs are 0..{node + 1}")
        if index >= node + 2:
            raise GenotypeError(
                f"{where}: input index {index} refers to a later or missing node; node {node + 2} can only read states 0..{node + 1}"
            )
    steps = len(edges) // 2
    if len(concat) == 0:
        raise GenotypeError(f"{cell_name} cell: concat list is empty")
    for c in concat:
        if isinstance(c, bool) or not isinstance(c, int):
            raise GenotypeError(f"{cell_name} cell: concat entry {brief(c)} is not an integer node index")
        if c < 2 or c >= steps + 2:
            raise GenotypeError(
                f"{cell_name} cell: concat names node {c}, which does not exist; the cell's nodes are 2..{steps + 1}"
            )
    if len(set(concat)) != len(concat):
        raise GenotypeError(f"{cell_name} cell: concat list {list(concat)} names a node twice")


def validate_cnn_genotype(genotype: CNNGenotype) -> CNNGenotype:
    """Validate both cells of a CNN genotype; return it unchanged."""
    validate_cnn_cell("normal", genotype.normal, genotype.normal_concat)
    validate_cnn_cell("reduce", genotype.reduce, genotype.reduce_concat)
    return genotype


def validate_recurrent_genotype(genotype: RecurrentGenotype) -> RecurrentGenotype:
    """Validate a recurrent genotype: known ops, predecessors computed earlier, concat of existing nodes."""
    if len(genotype.recurrent) == 0:
        raise GenotypeError("recurrent cell: has no (op, predecessor) pairs")
    GENOTYPE_NODES.check("recurrent cell", len(genotype.recurrent))
    for k, raw in enumerate(genotype.recurrent):
        op, index = _check_edge_shape(f"recurrent cell node {k + 1}", raw)
        where = f"recurrent cell node {k + 1}"
        check_op(where, op, RNN_CELL_OPS)
        if index < 0 or index > k:
            raise GenotypeError(
                f"{where}: predecessor {index} refers to a later or missing node; node {k + 1} can only read states 0..{k}"
            )
    steps = len(genotype.recurrent)
    if len(genotype.concat) == 0:
        raise GenotypeError("recurrent cell: concat list is empty")
    for c in genotype.concat:
        if isinstance(c, bool) or not isinstance(c, int) or c < 0 or c > steps:
            raise GenotypeError(
                f"recurrent cell: concat names node {brief(c)}, which does not exist; nodes are 0..{steps}")
    if len(set(genotype.concat)) != len(genotype.concat):
        raise GenotypeError(f"recurrent cell: concat list {list(genotype.concat)} names a node twice")
    return genotype
