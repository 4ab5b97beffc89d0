"""Cell diagrams in the style of the DARTS papers (inputs left, nodes in the middle, output right).

Rendered with matplotlib (a core dependency) to SVG or PNG, chosen by the file extension.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

from nasdeploy.errors import ConfigError
from nasdeploy.genotypes.autodeeplab import AutoDeepLabGenotype
from nasdeploy.genotypes.model import CNNGenotype, Genotype, RecurrentGenotype
from nasdeploy.utils.files import write_bytes_atomic

_COLORS = {"input": "#a6dba0", "node": "#a6cee3", "output": "#fdbf6f"}
_FORMATS = {".svg": "svg", ".png": "png"}


def graph_layout(
    input_labels: Sequence[str],
    node_labels: Sequence[str],
    edges: Sequence[tuple[int, int, str]],
    output_sources: Sequence[int],
    output_label: str,
) -> dict:
    """Positions and labelled edges of a cell graph; states are numbered inputs first, then nodes."""
    n_in, steps = len(input_labels), len(node_labels)
    nodes: dict[int | str, dict] = {}
    for k, label in enumerate(input_labels):
        nodes[k] = {"xy": (0.0, float(n_in - 1 - k) * 1.6 + 0.8), "label": label, "kind": "input"}
    for i, label in enumerate(node_labels):
        y = (steps - 1 - i) * 1.2 - (steps - 1) * 0.6 + 1.6
        nodes[n_in + i] = {"xy": (1.6 + 1.3 * i, y), "label": label, "kind": "node"}
    nodes["out"] = {"xy": (1.6 + 1.3 * steps + 0.6, 1.6), "label": output_label, "kind": "output"}
    arrows: list[tuple[int | str, int | str, str]] = list(edges)
    arrows += [(c, "out", "") for c in output_sources]
    return {"nodes": nodes, "edges": arrows}


def cell_layout(edges: Sequence[tuple[str, int]], concat: Sequence[int]) -> dict:
    """Layout of one CNN cell (two inputs, two ops per node, concat to the output)."""
    steps = len(edges) // 2
    arrows = [(src, 2 + k // 2, op) for k, (op, src) in enumerate(edges)]
    return graph_layout(("$c_{k-2}$", "$c_{k-1}$"), [str(i) for i in range(steps)], arrows, concat, "$c_{k}$")


def _render(ax, layout: dict, title: str) -> None:
    from matplotlib.patches import FancyArrowPatch

    nodes = layout["nodes"]
    for src, dst, label in layout["edges"]:
        (x0, y0), (x1, y1) = nodes[src]["xy"], nodes[dst]["xy"]
        ax.add_patch(
            FancyArrowPatch(
                (x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=10, shrinkA=14, shrinkB=14,
                connectionstyle="arc3,rad=0.08", color="#555555", lw=0.9,
            )
        )
        if label:
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.08, label, fontsize=6.5, ha="center", va="bottom",
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
    for node in nodes.values():
        x, y = node["xy"]
        ax.text(x, y, node["label"], ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round,pad=0.35", "fc": _COLORS[node["kind"]], "ec": "#333333"})
    xs = [n["xy"][0] for n in nodes.values()]
    ys = [n["xy"][1] for n in nodes.values()]
    ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
    ax.set_ylim(min(ys) - 0.9, max(ys) + 0.9)
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def genotype_layouts(genotype: Genotype) -> list[tuple[str, dict]]:
    """(title, layout) of every cell of a genotype."""
    if isinstance(genotype, CNNGenotype):
        return [
            ("normal cell", cell_layout(genotype.normal, genotype.normal_concat)),
            ("reduction cell", cell_layout(genotype.reduce, genotype.reduce_concat)),
        ]
    if isinstance(genotype, RecurrentGenotype):
        # States: 0 = x_t, 1 = h_{t-1}, 2 = s0, 2 + i = node i.
        arrows = [(0, 2, "W0"), (1, 2, "W0")]
        arrows += [(2 + pred, 3 + i, op) for i, (op, pred) in enumerate(genotype.recurrent)]
        labels = ["0"] + [str(i + 1) for i in range(genotype.steps)]
        layout = graph_layout(("$x_t$", "$h_{t-1}$"), labels, arrows, [2 + c for c in genotype.concat], "$h_t$ (mean)")
        return [("recurrent cell", layout)]
    if isinstance(genotype, AutoDeepLabGenotype):
        arrows = [(src, 2 + k // 2, op) for k, (op, src) in enumerate(genotype.cell)]
        blocks = range(2, 2 + genotype.blocks)  # the cell output concatenates every block
        layout = graph_layout(("$h^{l-2}$", "$h^{l-1}$"), [str(i + 1) for i in range(genotype.blocks)], arrows,
                              blocks, "$h^{l}$")
        return [(f"cell (path: strides {'-'.join(str(s) for s in genotype.strides)})", layout)]
    layouts = getattr(genotype, "layouts", None)
    if callable(layouts):
        return layouts()
    raise ConfigError(f"cannot draw genotype kind '{genotype.kind}'")


def render_genotype(genotype: Genotype, fmt: str = "svg") -> bytes:
    """The diagram of all cells of a genotype as SVG or PNG bytes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    panels = genotype_layouts(genotype)
    width = max(len(layout["nodes"]) for _, layout in panels) * 1.1 + 1.0
    fig = Figure(figsize=(width, 3.2 * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (title, layout) in zip(axes, panels):
        _render(ax, layout, f"{genotype.name or 'genotype'}: {title}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=150)
    return buf.getvalue()


def draw_genotype(genotype: Genotype, path: str | os.PathLike[str]) -> Path:
    """Write the cell diagrams of a genotype to an .svg or .png file (atomically)."""
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMATS:
        raise ConfigError(f"cannot draw to '{path}': the file must end in .svg or .png")
    return write_bytes_atomic(path, render_genotype(genotype, _FORMATS[suffix]))
