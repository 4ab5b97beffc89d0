"""Human-readable text form of a genotype."""

from __future__ import annotations

from typing import Sequence

from nasdeploy.genotypes.model import CNNGenotype, Genotype, RecurrentGenotype


def _cnn_cell_lines(title: str, edges: Sequence[tuple[str, int]], concat: Sequence[int]) -> list[str]:
    lines = [f"{title} cell ({len(edges) // 2} nodes, concat {list(concat)}):"]
    for i in range(len(edges) // 2):
        (op_a, in_a), (op_b, in_b) = edges[2 * i], edges[2 * i + 1]
        lines.append(f"  node {i + 2} = {op_a}({_state(in_a)}) + {op_b}({_state(in_b)})")
    return lines


def _state(index: int) -> str:
    return {0: "c_{k-2}", 1: "c_{k-1}"}.get(index, f"node {index}")


def describe_genotype(genotype: Genotype) -> str:
    """A multi-line description of a genotype."""
    head = f"{genotype.name or '(unnamed)'}  [kind: {genotype.kind}]"
    if isinstance(genotype, CNNGenotype):
        lines = [head]
        lines += _cnn_cell_lines("normal", genotype.normal, genotype.normal_concat)
        lines += _cnn_cell_lines("reduce", genotype.reduce, genotype.reduce_concat)
        return "\n".join(lines)
    if isinstance(genotype, RecurrentGenotype):
        lines = [head, f"recurrent cell ({genotype.steps} nodes, output = mean of nodes {list(genotype.concat)}):"]
        for i, (op, pred) in enumerate(genotype.recurrent):
            lines.append(f"  node {i + 1} = {op}(node {pred})")
        return "\n".join(lines)
    describe = getattr(genotype, "describe", None)
    return describe() if callable(describe) else f"{head}\n{genotype!r}"
