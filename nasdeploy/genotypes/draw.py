"""Cell diagrams: states as coloured boxes, every op as a small box of its own between its input and its node.

The numbering is the text form's (nasdeploy.genotypes.cellgraph). Graphviz's `dot` places the boxes
and routes the lines where the `graphviz` extra and the `dot` program are installed; elsewhere our own
layered layout (nasdeploy.genotypes.layout) does. Rendered with matplotlib to SVG or PNG, chosen by the
file extension; one axis unit is one point, so the layout's text sizes are the drawn ones.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from nasdeploy.errors import ConfigError
from nasdeploy.genotypes.autodeeplab import AutoDeepLabGenotype
from nasdeploy.genotypes.cellgraph import CellGraph, cell_graphs
from nasdeploy.genotypes.layout import Box, Layout, layered_layout
from nasdeploy.genotypes.model import Genotype
from nasdeploy.utils.files import write_bytes_atomic

_FORMATS = {".svg": "svg", ".png": "png"}
_FILL = {"input": "#a6dba0", "node": "#a6cee3", "output": "#fdbf6f", "op": "#ffffff"}
_FONT = {"input": 10.0, "node": 10.0, "output": 10.0, "op": 8.5, "title": 11.0}
_PAD = {"input": (5.0, 3.5), "node": (5.0, 3.5), "output": (5.0, 3.5), "op": (4.0, 2.5)}  # (x, y) around text
_LINE = "#555555"
_TITLE_SPACE = 24.0  # height of the band above a panel that holds its title
_PANEL_GAP = 10.0
ENGINES = ("dot", "own")


def state_label(name: str) -> str:
    """The drawn text of a state: numbers as they are, symbols such as c_{k-2} as mathtext."""
    return name if name.isdigit() else f"${name}$"


def default_engine() -> str:
    """'dot' where the graphviz package and its `dot` program are installed, else 'own'."""
    import importlib.util
    import shutil

    return "dot" if importlib.util.find_spec("graphviz") and shutil.which("dot") else "own"


def _text_size(text: str, size: float) -> tuple[float, float]:
    """Width and height (points) of a text line as matplotlib renders it."""
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    width, height, _ = RendererAgg(1, 1, 72).get_text_width_height_descent(
        text, FontProperties(size=size), ismath=text.startswith("$")
    )
    return width, height


def panel_graph(graph: CellGraph) -> tuple[list[Box], list[tuple[str, str]], dict[str, tuple[str, str]]]:
    """Boxes, links and (kind, text) per box of one cell: states 's<i>', ops 'op<k>', the output 'out'."""
    texts: dict[str, tuple[str, str]] = {}
    for i, name in enumerate(graph.states):
        texts[f"s{i}"] = ("input" if i < graph.inputs else "node", state_label(name))
    texts.update({f"op{k}": ("op", op.op) for k, op in enumerate(graph.ops)})
    texts["out"] = ("output", state_label(graph.output))
    order = [f"s{i}" for i in range(graph.inputs)]
    links: list[tuple[str, str]] = []
    for target in range(graph.inputs, len(graph.states)):
        for k, op in enumerate(graph.ops):
            if op.target == target:
                order.append(f"op{k}")
                links += [(f"s{s}", f"op{k}") for s in op.sources] + [(f"op{k}", f"s{target}")]
        order.append(f"s{target}")
    links += [(f"s{s}", "out") for s in graph.output_sources]
    boxes = []
    for box_id in order + ["out"]:
        kind, text = texts[box_id]
        (w, h), (px, py) = _text_size(text, _FONT[kind]), _PAD[kind]
        line = _FONT[kind] * 1.3  # one height per kind, whatever the glyphs, so rows line up
        boxes.append(Box(box_id, max(w + 2 * px, line + 2 * py), max(h, line) + 2 * py, pull=kind == "op"))
    return boxes, links, texts


def panel_layout(graph: CellGraph, engine: str) -> tuple[Layout, dict[str, tuple[str, str]]]:
    """The placed boxes and routed lines of one cell, by the named layout engine."""
    boxes, links, texts = panel_graph(graph)
    first, last = [f"s{i}" for i in range(graph.inputs)], ["out"]
    if engine == "dot":
        from nasdeploy.genotypes.layout_dot import dot_layout

        return dot_layout(boxes, links, first, last), texts
    if engine == "own":
        return layered_layout(boxes, links, first, last), texts
    raise ConfigError(f"unknown layout engine '{engine}' (known: {', '.join(ENGINES)})")


def panel_title(genotype: Any, graph: CellGraph) -> str:
    """The title over one cell's diagram."""
    title = f"{genotype.name or 'genotype'}: {graph.title}"
    if isinstance(genotype, AutoDeepLabGenotype):
        title += f" (path: strides {'-'.join(str(s) for s in genotype.strides)})"
    return title


def _draw_panel(ax: Any, layout: Layout, texts: dict[str, tuple[str, str]], x0: float, y0: float, tag: str) -> None:
    """Draw one laid-out cell with its lower-left corner at (x0, y0); artists carry gids for checks.

    Patches go in as plain artists: the axis limits are fixed, and add_patch's limit updates cost more
    than the drawing.
    """
    from matplotlib.patches import FancyBboxPatch, PathPatch, Polygon
    from matplotlib.path import Path as MplPath

    for route in layout.routes:
        pts = [(x0 + x, y0 + y) for x, y in route.points]
        step = MplPath.CURVE4 if route.curved else MplPath.LINETO
        line = MplPath(pts, [MplPath.MOVETO] + [step] * (len(pts) - 1))
        gid = f"{tag}/link/{route.source}/{route.target}"
        ax.add_artist(PathPatch(line, fill=False, ec=_LINE, lw=0.9, capstyle="butt", joinstyle="round", gid=gid))
        (xa, ya), (xb, yb) = pts[-2], pts[-1]
        norm = max(((xb - xa) ** 2 + (yb - ya) ** 2) ** 0.5, 1e-9)
        ux, uy = (xb - xa) / norm, (yb - ya) / norm
        base = (xb - 6.0 * ux, yb - 6.0 * uy)
        head = [(xb, yb), (base[0] - 2.6 * uy, base[1] + 2.6 * ux), (base[0] + 2.6 * uy, base[1] - 2.6 * ux)]
        ax.add_artist(Polygon(head, closed=True, fc=_LINE, ec="none", gid=gid + "/head"))
    for box_id, box in layout.boxes.items():
        kind, text = texts[box_id]
        rounding = 2.0 if kind == "op" else 4.0
        ax.add_artist(
            FancyBboxPatch(
                (x0 + box.left, y0 + box.y - box.height / 2), box.width, box.height,
                boxstyle=f"round,pad=0,rounding_size={rounding}", fc=_FILL[kind], ec="#333333",
                lw=0.8 if kind == "op" else 1.0, gid=f"{tag}/box/{box_id}",
            )
        )  # fmt: skip
        ax.text(x0 + box.x, y0 + box.y, text, ha="center", va="center", fontsize=_FONT[kind],
                gid=f"{tag}/text/{box_id}")  # fmt: skip


def genotype_figure(genotype: Genotype | AutoDeepLabGenotype, engine: str | None = None) -> Any:
    """A matplotlib Figure with one panel per cell of the genotype, stacked top to bottom."""
    from matplotlib.figure import Figure

    engine = engine or default_engine()
    panels = []
    for graph in cell_graphs(genotype):
        layout, texts = panel_layout(graph, engine)
        title = panel_title(genotype, graph)
        panels.append((layout, texts, title, _text_size(title, _FONT["title"])[0]))
    width = max(max(p[0].width, p[3] + 8.0) for p in panels) + 2 * _PANEL_GAP
    height = sum(p[0].height + _TITLE_SPACE for p in panels) + _PANEL_GAP * (len(panels) + 1)
    fig = Figure(figsize=(width / 72.0, height / 72.0))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0.0, width)
    ax.set_ylim(0.0, height)
    ax.axis("off")
    top = height - _PANEL_GAP
    for index, (layout, texts, title, _) in enumerate(panels):
        ax.text(width / 2, top - _TITLE_SPACE / 2, title, ha="center", va="center", fontsize=_FONT["title"],
                gid=f"p{index}/title")  # fmt: skip
        top -= _TITLE_SPACE + layout.height
        _draw_panel(ax, layout, texts, (width - layout.width) / 2, top, f"p{index}")
        top -= _PANEL_GAP
    return fig


def render_genotype(genotype: Genotype | AutoDeepLabGenotype, fmt: str = "svg", engine: str | None = None) -> bytes:
    """The diagram of all cells of a genotype as SVG or PNG bytes."""
    buf = io.BytesIO()
    genotype_figure(genotype, engine).savefig(buf, format=fmt, dpi=150)
    return buf.getvalue()


def draw_genotype(genotype: Genotype | AutoDeepLabGenotype, path: str | os.PathLike[str]) -> Path:
    """Write the cell diagrams of a genotype to an .svg or .png file (atomically)."""
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMATS:
        raise ConfigError(f"cannot draw to '{path}': the file must end in .svg or .png")
    return write_bytes_atomic(path, render_genotype(genotype, _FORMATS[suffix]))
