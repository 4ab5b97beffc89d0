"""Typed genotype models: the hinge between search and deployment."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Union

Edge = tuple[str, int]

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class CNNGenotype:
    """A DARTS-style CNN cell pair: (op, input) pairs per node (two per node) and concat lists.

    Inputs 0 and 1 are the two cell inputs; node i (0-based) is state 2 + i.
    """

    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]
    name: str | None = field(default=None, compare=False)

    kind: ClassVar[str] = "cnn_cell"

    @property
    def normal_steps(self) -> int:
        """Number of intermediate nodes of the normal cell."""
        return len(self.normal) // 2

    @property
    def reduce_steps(self) -> int:
        """Number of intermediate nodes of the reduction cell."""
        return len(self.reduce) // 2


@dataclass(frozen=True)
class RecurrentGenotype:
    """A DARTS recurrent cell: one (op, predecessor) pair per node; state 0 is s0."""

    recurrent: tuple[Edge, ...]
    concat: tuple[int, ...]
    name: str | None = field(default=None, compare=False)

    kind: ClassVar[str] = "rnn_cell"

    @property
    def steps(self) -> int:
        """Number of intermediate nodes."""
        return len(self.recurrent)


Genotype = Union[CNNGenotype, RecurrentGenotype]
