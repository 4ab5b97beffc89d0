"""A layered left-to-right layout of boxes in which no link ever crosses a box it does not join.

Boxes go into columns by longest path (a `pull` box moves up to the column before its nearest
successor), a link spanning several columns passes each one as a point of its own (shared by the links
of one source, or of one `last` target, so fan-outs and the output's fan-in run as one line),
barycentre sweeps order every column, and each column is spaced by a least-squares fit to its
neighbours under minimum gaps. A link runs horizontally through every column band, at a height no box
of that column covers, and bends only in the empty gaps between columns: so it meets no box but its two
ends, by construction. Units are points; y grows upwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

STUB = 8.0  # horizontal run of a link between a column's edge and its box (room for the arrow)
BOX_GAP = 10.0  # vertical space between two boxes of a column
LINE_GAP = 7.0  # vertical space between a passing line and its neighbours
MIN_GAP, MAX_GAP, SLOPE = 16.0, 44.0, 0.3  # gap between columns: SLOPE x the largest rise, clamped
MARGIN = 4.0
_WEIGHT = {0: 1.0, 1: 2.0, 2: 8.0}  # pull of a neighbour by number of passing points: keeps long lines straight


@dataclass(frozen=True)
class Box:
    """A box to place: its id and size; `pull` places it just before its nearest successor."""

    id: str
    width: float
    height: float
    pull: bool = False


@dataclass(frozen=True)
class Placed:
    """A placed box: centre and size."""

    x: float
    y: float
    width: float
    height: float

    @property
    def left(self) -> float:
        """x of the left edge."""
        return self.x - self.width / 2

    @property
    def right(self) -> float:
        """x of the right edge."""
        return self.x + self.width / 2


@dataclass(frozen=True)
class Route:
    """The drawn line of one link: a polyline, or with `curved` a chain of cubic Bezier segments."""

    source: str
    target: str
    points: tuple[tuple[float, float], ...]
    curved: bool = False


@dataclass(frozen=True)
class Layout:
    """Placed boxes and routed links inside a width x height area."""

    boxes: dict[str, Placed]
    routes: tuple[Route, ...]
    width: float
    height: float


Item = tuple  # ("box", id) or a passing point ("from", source, column) / ("to", target, column)


def _ranks(boxes: Sequence[Box], links: Sequence[tuple[str, str]], last: Sequence[str]) -> dict[str, int]:
    preds: dict[str, list[str]] = {b.id: [] for b in boxes}
    succs: dict[str, list[str]] = {b.id: [] for b in boxes}
    for u, v in links:
        preds[v].append(u)
        succs[u].append(v)
    order, seen = [], set()
    while len(order) < len(boxes):
        ready = [b.id for b in boxes if b.id not in seen and all(p in seen for p in preds[b.id])]
        if not ready:
            raise ValueError("layered_layout: the links form a cycle")
        order += ready
        seen.update(ready)
    rank: dict[str, int] = {}
    for v in order:
        rank[v] = max((rank[p] + 1 for p in preds[v]), default=0)
    end = max((rank[v] for v in order if v not in last), default=0) + 1
    rank.update({v: max(rank[v], end) for v in last})
    pull = {b.id for b in boxes if b.pull}
    for v in reversed(order):
        if v in pull and succs[v]:
            rank[v] = min(rank[s] for s in succs[v]) - 1
    return rank


Lines = dict[int, list[tuple[Item, Item]]]  # per gap r (between columns r and r + 1): its (left, right) items


def _crossings(columns: list[list[Item]], lines: Lines, gaps: Sequence[int], heavy: set) -> int:
    """Crossing line pairs in the given gaps (gap r lies between columns r and r + 1).

    Two lines that both leave a `heavy` box (an op, read as one edge with the lines around it) count
    three times: a crossing there hides which node an op feeds, one in a fan-out does not.
    """
    pos = {item: i for column in columns for i, item in enumerate(column)}
    count = 0
    for r in gaps:
        between = [(pos[a], pos[b], a in heavy) for a, b in lines[r]]
        for i, (a1, b1, h1) in enumerate(between):
            count += sum(1 + 2 * (h1 and h2) for a2, b2, h2 in between[i + 1 :] if (a1 - a2) * (b1 - b2) < 0)
    return count


def _order(columns: list[list[Item]], pairs: set[tuple[Item, Item]], fixed: set[int], heavy: set) -> None:
    """Barycentre sweeps down and up, each followed by swaps of neighbours that remove crossings (in place)."""
    near: dict[bool, dict[Item, list[Item]]] = {True: {}, False: {}}  # True: predecessors
    rank = {item: r for r, column in enumerate(columns) for item in column}
    lines: Lines = {r: [] for r in range(len(columns))}
    for a, b in sorted(pairs):
        near[False].setdefault(a, []).append(b)
        near[True].setdefault(b, []).append(a)
        lines[rank[a]].append((a, b))
    every_gap = range(len(columns) - 1)
    best, best_count = [list(c) for c in columns], _crossings(columns, lines, every_gap, heavy)
    for sweep in range(8):
        down = sweep % 2 == 0
        for r in range(1, len(columns)) if down else range(len(columns) - 2, -1, -1):
            if r in fixed:
                continue
            other = {item: i for i, item in enumerate(columns[r - 1 if down else r + 1])}
            current = {item: i for i, item in enumerate(columns[r])}

            def key(item: Item) -> tuple[float, int]:
                ns = near[down].get(item, [])
                return (sum(other[n] for n in ns) / len(ns) if ns else current[item], current[item])

            columns[r].sort(key=key)
        for r in sorted(set(range(len(columns))) - fixed):
            local, improved = [g for g in (r - 1, r) if 0 <= g < len(columns) - 1], True
            while improved:
                improved = False
                for i in range(len(columns[r]) - 1):
                    before = _crossings(columns, lines, local, heavy)
                    columns[r][i], columns[r][i + 1] = columns[r][i + 1], columns[r][i]
                    if _crossings(columns, lines, local, heavy) < before:
                        improved = True
                    else:
                        columns[r][i], columns[r][i + 1] = columns[r][i + 1], columns[r][i]
        count = _crossings(columns, lines, every_gap, heavy)
        if count < best_count:
            best, best_count = [list(c) for c in columns], count
    columns[:] = best


def _centre(points: list[tuple[float, float]], l1: bool) -> float:
    """The value minimising the weighted squared (or with l1, absolute) distance to the points."""
    total = sum(w for _, w in points)
    if not l1:
        return sum(v * w for v, w in points) / total
    ordered, seen = sorted(points), 0.0
    for k, (v, w) in enumerate(ordered):
        seen += w
        if seen > total / 2 + 1e-9:
            return v
        if abs(seen - total / 2) <= 1e-9:  # a flat stretch of medians: take its middle
            return (v + ordered[k + 1][0]) / 2
    return ordered[-1][0]


def _isotonic(points: list[list[tuple[float, float]]], l1: bool) -> list[float]:
    """Nondecreasing values, each fit to its item's points (pool adjacent violators)."""
    blocks: list[tuple[float, list[tuple[float, float]], int]] = []
    for pts in points:
        blocks.append((_centre(pts, l1), pts, 1))
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            _, p2, n2 = blocks.pop()
            _, p1, n1 = blocks.pop()
            blocks.append((_centre(p1 + p2, l1), p1 + p2, n1 + n2))
    return [value for value, _, n in blocks for _ in range(n)]


def _heights(columns: list[list[Item]], sizes: dict[str, tuple[float, float]], pairs: set) -> dict[Item, float]:
    """Vertical centre (growing downwards) of every item: column by column, the best fit to its neighbours.

    Least squares first (to settle), then absolute distances, which leave most lines exactly straight.
    """
    neighbours: dict[Item, list[Item]] = {}
    for a, b in pairs:
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)

    def height(item: Item) -> float:
        return sizes[item[1]][1] if item[0] == "box" else 0.0

    def offsets(column: list[Item]) -> list[float]:
        out, total = [0.0], 0.0
        for a, b in zip(column, column[1:]):
            gap = BOX_GAP if a[0] == b[0] == "box" else LINE_GAP
            total += height(a) / 2 + height(b) / 2 + gap
            out.append(total)
        return out

    p = {}
    for column in columns:
        offs = offsets(column)
        p.update({item: o - offs[-1] / 2 for item, o in zip(column, offs)})
    for sweep in range(16):
        l1 = sweep >= 8
        for column in columns if sweep % 2 == 0 else columns[::-1]:
            offs = offsets(column)
            points = []
            for item, o in zip(column, offs):
                ns = neighbours.get(item, [])
                pts = [(p[n] - o, _WEIGHT[(item[0] != "box") + (n[0] != "box")]) for n in ns]
                points.append(pts or [(p[item] - o, 1.0)])
            p.update({item: q + o for item, q, o in zip(column, _isotonic(points, l1), offs)})
    return p


def layered_layout(
    boxes: Sequence[Box], links: Sequence[tuple[str, str]], first: Sequence[str] = (), last: Sequence[str] = ()
) -> Layout:
    """Place boxes left to right along the links; `first` fills column 0 in its order, `last` the end."""
    sizes = {b.id: (b.width, b.height) for b in boxes}
    box_rank = _ranks(boxes, links, last)
    rank: dict[Item, int] = {("box", b.id): box_rank[b.id] for b in boxes}
    chains: list[list[Item]] = []
    for u, v in links:
        chain: list[Item] = [("box", u)]
        for r in range(box_rank[u] + 1, box_rank[v]):
            chain.append(("to", v, r) if v in last else ("from", u, r))
            rank[chain[-1]] = r
        chains.append(chain + [("box", v)])
    columns: list[list[Item]] = [[] for _ in range(max(rank.values()) + 1)]
    for item in rank:  # boxes in the given order, then passing points as the links meet them
        columns[rank[item]].append(item)
    if first:
        columns[0].sort(key=lambda item: list(first).index(item[1]) if item[1] in first else len(first))
    pairs = {(a, b) for chain in chains for a, b in zip(chain, chain[1:])}
    _order(columns, pairs, {0} if first else set(), {("box", b.id) for b in boxes if b.pull})
    p = _heights(columns, sizes, pairs)

    widths = [max((sizes[i[1]][0] for i in c if i[0] == "box"), default=0.0) + 2 * STUB for c in columns]
    lefts = [MARGIN]
    for r in range(len(columns) - 1):
        rise = max((abs(p[a] - p[b]) for a, b in pairs if rank[a] == r), default=0.0)
        lefts.append(lefts[-1] + widths[r] + min(max(MIN_GAP, SLOPE * rise), MAX_GAP))
    top = min(p[i] - (sizes[i[1]][1] / 2 if i[0] == "box" else 0.0) for i in p) - MARGIN
    bottom = max(p[i] + (sizes[i[1]][1] / 2 if i[0] == "box" else 0.0) for i in p) + MARGIN
    height = bottom - top

    def y(item: Item) -> float:
        return bottom - p[item]

    placed = {
        b.id: Placed(lefts[box_rank[b.id]] + widths[box_rank[b.id]] / 2, y(("box", b.id)), b.width, b.height)
        for b in boxes
    }
    routes = []
    for (u, v), chain in zip(links, chains):
        points = [(placed[u].right, y(chain[0])), (lefts[box_rank[u]] + widths[box_rank[u]], y(chain[0]))]
        for item in chain[1:-1]:
            points += [(lefts[rank[item]], y(item)), (lefts[rank[item]] + widths[rank[item]], y(item))]
        points += [(lefts[box_rank[v]], y(chain[-1])), (placed[v].left, y(chain[-1]))]
        routes.append(Route(u, v, tuple(points)))
    return Layout(placed, tuple(routes), lefts[-1] + widths[-1] + MARGIN, height)
