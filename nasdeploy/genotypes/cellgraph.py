"""Every kind of cell as one graph of named states: the single numbering of the text form and the figures.

A number in the text or a figure is the index the genotype's JSON uses for that state: the CNN and
Auto-DeepLab cells read inputs 0 and 1 (named c_{k-2}, c_{k-1} and H^{l-2}, H^{l-1}) and number their
nodes (blocks) from 2; the recurrent cell numbers s0 as node 0 and its nodes from 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from nasdeploy.errors import ConfigError
from nasdeploy.genotypes.autodeeplab import AutoDeepLabGenotype
from nasdeploy.genotypes.model import CNNGenotype, Edge, Genotype, RecurrentGenotype


@dataclass(frozen=True)
class CellOp:
    """One operation of a cell: `op` applied to the sources (state indices), summed into `target`."""

    op: str
    sources: tuple[int, ...]
    target: int


@dataclass(frozen=True)
class CellGraph:
    """A cell: state names (inputs first, then nodes), its ops, and the output combining some states."""

    title: str
    states: tuple[str, ...]
    inputs: int
    ops: tuple[CellOp, ...]
    output: str
    combine: str
    output_sources: tuple[int, ...]
    node_word: str = "node"

    def ref(self, state: int) -> str:
        """How text names a state: an input by its symbol, a node as 'node 3'."""
        name = self.states[state]
        return name if state < self.inputs else f"{self.node_word} {name}"

    def node_lines(self) -> list[str]:
        """One 'node 3 = op(a) + op(b)' line per node and one for the output, in order."""
        lines = []
        for target in range(self.inputs, len(self.states)):
            terms = [f"{o.op}({', '.join(self.ref(s) for s in o.sources)})" for o in self.ops if o.target == target]
            lines.append(f"{self.ref(target)} = {' + '.join(terms)}")
        lines.append(f"{self.output} = {self.combine}({', '.join(self.ref(s) for s in self.output_sources)})")
        return lines


def _two_input_cell(
    title: str, inputs: tuple[str, str], edges: Sequence[Edge], concat: Sequence[int], output: str, word: str
) -> CellGraph:
    steps = len(edges) // 2
    return CellGraph(
        title=title,
        states=inputs + tuple(str(2 + i) for i in range(steps)),
        inputs=2,
        ops=tuple(CellOp(op, (src,), 2 + k // 2) for k, (op, src) in enumerate(edges)),
        output=output,
        combine="concat",
        output_sources=tuple(concat),
        node_word=word,
    )


def cell_graphs(genotype: Genotype | AutoDeepLabGenotype) -> list[CellGraph]:
    """The cells of a genotype, in the order the text and the figures show them."""
    if isinstance(genotype, CNNGenotype):
        inputs = ("c_{k-2}", "c_{k-1}")
        return [
            _two_input_cell("normal cell", inputs, genotype.normal, genotype.normal_concat, "c_{k}", "node"),
            _two_input_cell("reduction cell", inputs, genotype.reduce, genotype.reduce_concat, "c_{k}", "node"),
        ]
    if isinstance(genotype, RecurrentGenotype):
        # States x_t, h_{t-1}, then node j (j = 0 is s0) at position 2 + j.
        ops = [CellOp("W0", (0, 1), 2)]
        ops += [CellOp(op, (2 + pred,), 3 + i) for i, (op, pred) in enumerate(genotype.recurrent)]
        graph = CellGraph(
            title="recurrent cell",
            states=("x_t", "h_{t-1}") + tuple(str(j) for j in range(genotype.steps + 1)),
            inputs=2,
            ops=tuple(ops),
            output="h_t",
            combine="mean",
            output_sources=tuple(2 + c for c in genotype.concat),
        )
        return [graph]
    if isinstance(genotype, AutoDeepLabGenotype):
        blocks = tuple(range(2, 2 + genotype.blocks))  # the cell output concatenates every block
        inputs = ("H^{l-2}", "H^{l-1}")
        return [_two_input_cell("cell", inputs, genotype.cell, blocks, "H^{l}", "block")]
    raise ConfigError(f"cannot show the cells of genotype kind '{genotype.kind}'")
