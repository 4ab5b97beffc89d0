"""Human-readable text form of a genotype (states numbered as in its JSON and its figures)."""

from __future__ import annotations

from nasdeploy.genotypes.autodeeplab import AutoDeepLabGenotype
from nasdeploy.genotypes.cellgraph import CellGraph, cell_graphs
from nasdeploy.genotypes.model import CNNGenotype, Genotype, RecurrentGenotype


def _cell_header(genotype: Genotype | AutoDeepLabGenotype, graph: CellGraph) -> str:
    nodes = len(graph.states) - graph.inputs
    if isinstance(genotype, RecurrentGenotype):
        return f"{graph.title} ({genotype.steps} nodes, output = mean of nodes {list(genotype.concat)}):"
    if isinstance(genotype, AutoDeepLabGenotype):
        return f"{graph.title} ({nodes} blocks, output = concat of all blocks):"
    concat = [int(graph.states[s]) for s in graph.output_sources]
    return f"{graph.title} ({nodes} nodes, concat {concat}):"


def describe_genotype(genotype: Genotype | AutoDeepLabGenotype) -> str:
    """A multi-line description of a genotype."""
    lines = [f"{genotype.name or '(unnamed)'}  [kind: {genotype.kind}]"]
    if isinstance(genotype, AutoDeepLabGenotype):
        lines.append(f"network path ({genotype.layers} layers, level per layer): {list(genotype.path)}")
        lines.append(f"  output strides: {list(genotype.strides)}")
    elif not isinstance(genotype, (CNNGenotype, RecurrentGenotype)):
        return f"{lines[0]}\n{genotype!r}"
    for graph in cell_graphs(genotype):
        lines.append(_cell_header(genotype, graph))
        lines += [f"  {line}" for line in graph.node_lines()]
    return "\n".join(lines)
