"""The same layout by Graphviz's `dot` (the optional `graphviz` extra and the `dot` program)."""

from __future__ import annotations

import shlex
from typing import Sequence

from nasdeploy.errors import ConfigError
from nasdeploy.genotypes.layout import MARGIN, Box, Layout, Placed, Route

_PULL_WEIGHT = 8  # keeps an op box in the column just before the node it feeds


def dot_layout(
    boxes: Sequence[Box], links: Sequence[tuple[str, str]], first: Sequence[str] = (), last: Sequence[str] = ()
) -> Layout:
    """Boxes placed and links routed (as Bezier curves) by dot, left to right, in points."""
    try:
        import graphviz
    except ImportError as exc:
        raise ConfigError("the dot layout needs the graphviz extra: pip install 'nasdeploy[graphviz]'") from exc
    graph = graphviz.Digraph(
        graph_attr={"rankdir": "LR", "nodesep": "0.14", "ranksep": "0.3", "splines": "spline", "margin": "0"},
        node_attr={"shape": "box", "fixedsize": "true", "label": ""},
        edge_attr={"arrowhead": "none", "tailport": "e", "headport": "w"},
    )
    pull = {b.id for b in boxes if b.pull}
    for b in boxes:
        graph.node(b.id, width=f"{b.width / 72:.4f}", height=f"{b.height / 72:.4f}")
    for rank, ids in (("source", first), ("sink", last)):
        if ids:
            with graph.subgraph() as same:
                same.attr(rank=rank)
                for box_id in ids:
                    same.node(box_id)
    for u, v in links:
        graph.edge(u, v, weight=str(_PULL_WEIGHT if u in pull else 1))
    try:
        plain = graph.pipe(format="plain", encoding="utf-8")
    except graphviz.ExecutableNotFound as exc:
        raise ConfigError("the dot layout needs Graphviz's `dot` program on the PATH") from exc
    return _parse_plain(plain, {b.id: b for b in boxes}, links)


def _parse_plain(plain: str, boxes: dict[str, Box], links: Sequence[tuple[str, str]]) -> Layout:
    """Read dot's `plain` output (inches, y up) into a Layout in points with a margin all round."""
    centres: dict[str, tuple[float, float]] = {}
    curves: dict[tuple[str, str], list[tuple[float, float]]] = {}
    width = height = 0.0
    for line in plain.splitlines():
        fields = shlex.split(line)
        if not fields:
            continue
        if fields[0] == "graph":
            width, height = float(fields[2]) * 72, float(fields[3]) * 72
        elif fields[0] == "node":
            centres[fields[1]] = (float(fields[2]) * 72, float(fields[3]) * 72)
        elif fields[0] == "edge":
            n = int(fields[3])
            xy = [float(f) * 72 for f in fields[4 : 4 + 2 * n]]
            curves[(fields[1], fields[2])] = list(zip(xy[0::2], xy[1::2]))
    placed = {
        i: Placed(centres[i][0] + MARGIN, centres[i][1] + MARGIN, boxes[i].width, boxes[i].height) for i in boxes
    }
    routes = tuple(
        Route(u, v, tuple((x + MARGIN, y + MARGIN) for x, y in curves[(u, v)]), curved=True) for u, v in links
    )
    return Layout(placed, routes, width + 2 * MARGIN, height + 2 * MARGIN)
