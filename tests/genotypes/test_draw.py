"""Cell diagrams: nothing drawn overlaps, nothing is clipped, and the figure numbers states as the text does."""

from __future__ import annotations

import functools
import random
import re
from collections import Counter

import pytest

from nasdeploy.errors import ConfigError
from nasdeploy.genotypes import genotype_to_dict, get_genotype, list_genotypes
from nasdeploy.genotypes.describe import describe_genotype
from nasdeploy.genotypes.draw import default_engine, genotype_figure
from nasdeploy.genotypes.layout import Box, layered_layout

DPI = 150
ENGINES = ["own"] + (["dot"] if default_engine() == "dot" else [])


class Drawn:
    """The artists of a rendered figure, by the gid the drawing gives them, in display pixels."""

    def __init__(self, fig) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        fig.set_dpi(DPI)
        canvas = FigureCanvasAgg(fig)
        renderer = canvas.get_renderer()
        ax = fig.axes[0]
        self.size = (fig.bbox.width, fig.bbox.height)
        self.line_px = 0.9 * DPI / 72
        self.texts = {t.get_gid(): (t.get_text(), t.get_window_extent(renderer)) for t in ax.texts}
        self.boxes = {p.get_gid(): p.get_window_extent(renderer) for p in ax.patches if "/box/" in p.get_gid()}
        self.lines = {
            p.get_gid(): p.get_transform().transform_path(p.get_path()) for p in ax.patches if "/link/" in p.get_gid()
        }
        boxed = {gid.replace("/text/", "/box/") for gid in self.texts if "/text/" in gid}
        assert boxed == set(self.boxes) and self.lines, "every label has its box, and there are lines"

    def labels(self, panel: int, prefix: str) -> list[str]:
        """Texts of one panel's boxes whose id starts with prefix ('s' states, 'op' ops, 'out')."""
        head = f"p{panel}/text/{prefix}"
        return [text.strip("$") for gid, (text, _) in self.texts.items() if gid.startswith(head)]

    def link_ends(self, panel: int) -> list[tuple[str, str]]:
        """(source, target) box ids of one panel's lines."""
        ends = [gid.split("/")[2:4] for gid in self.lines if gid.startswith(f"p{panel}/") and "/head" not in gid]
        return [(a, b) for a, b in ends]


@functools.cache
def drawn(name: str, engine: str) -> Drawn:
    """A registry genotype's figure, rendered once for all the tests that read it."""
    return Drawn(genotype_figure(get_genotype(name), engine))


def _overlap(a, b, pad: float = 0.0) -> bool:
    return a.x0 - pad < b.x1 and b.x0 - pad < a.x1 and a.y0 - pad < b.y1 and b.y0 - pad < a.y1


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", list_genotypes())
def test_no_text_box_or_line_overlaps_another(name, engine):
    d = drawn(name, engine)
    texts = list(d.texts.items())
    for i, (gid_a, (_, a)) in enumerate(texts):
        assert 0 <= a.x0 and a.x1 <= d.size[0] and 0 <= a.y0 and a.y1 <= d.size[1], f"{gid_a} is clipped"
        for gid_b, (_, b) in texts[i + 1 :]:
            assert not _overlap(a, b), f"{name}: texts {gid_a} and {gid_b} overlap"
    boxes = list(d.boxes.items())
    for i, (gid_a, a) in enumerate(boxes):
        own_text = d.texts[gid_a.replace("/box/", "/text/")][1]
        assert a.x0 <= own_text.x0 and own_text.x1 <= a.x1 and a.y0 <= own_text.y0 and own_text.y1 <= a.y1
        for gid_b, b in boxes[i + 1 :]:
            assert not _overlap(a, b), f"{name}: boxes {gid_a} and {gid_b} overlap"
        for gid_t, (_, t) in texts:
            if "/title" in gid_t:
                assert not _overlap(a, t), f"{name}: box {gid_a} overlaps the title"
    for gid, path in d.lines.items():
        panel, _, source, target = gid.split("/")[:4]
        ends = {f"{panel}/box/{source}", f"{panel}/box/{target}"}
        for gid_b, b in boxes:
            if gid_b not in ends:
                grown = b.padded(d.line_px / 2)
                assert not path.intersects_bbox(grown, filled=False), f"{name}: line {gid} crosses box {gid_b}"
        for gid_t, (_, t) in texts:
            if "/title" in gid_t:
                assert not path.intersects_bbox(t, filled=False), f"{name}: line {gid} crosses {gid_t}"


def _sections(text: str) -> list[tuple[str, list[str]]]:
    """(header, its indented 'X = ...' lines) for every cell of a describe_genotype text."""
    sections: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if not line.startswith(" ") and " cell " in f" {line}":
            sections.append((line, []))
        elif line.startswith("  ") and " = " in line and sections:
            sections[-1][1].append(line.strip())
    return sections


def _name(ref: str) -> str:
    return re.sub(r"^(node|block) ", "", ref.strip())


@pytest.mark.parametrize("name", list_genotypes())
def test_figure_numbers_states_and_wires_ops_as_the_text_does(name):
    d = drawn(name, "own")
    sections = _sections(describe_genotype(get_genotype(name)))
    assert len(sections) == len({gid.split("/")[0] for gid in d.texts})
    for panel, (header, lines) in enumerate(sections):
        title = d.texts[f"p{panel}/title"][0]
        assert header.split(" (")[0] in title
        # From the text: every state named on either side, and (op, source, target) per term.
        names, wiring = set(), Counter()
        for line in lines[:-1]:
            lhs, rhs = line.split(" = ")
            for op, args in re.findall(r"(\w+)\(([^)]*)\)", rhs):
                for src in args.split(", "):
                    names.add(_name(src))
                    wiring[(op, _name(src), _name(lhs))] += 1
            names.add(_name(lhs))
        output = lines[-1].split(" = ")[0]
        # From the figure: box labels and, per op box, the labels of the boxes its lines join.
        states = d.labels(panel, "s")
        assert sorted(states) == sorted(names) and len(set(states)) == len(states)
        assert d.labels(panel, "out") == [output]
        head = f"p{panel}/text/"
        label = {gid[len(head) :]: text.strip("$") for gid, (text, _) in d.texts.items() if gid.startswith(head)}
        ends = d.link_ends(panel)
        drawn_wiring = Counter()
        for box, op in label.items():
            if box.startswith("op"):
                (target,) = [label[b] for a, b in ends if a == box]
                for source in (label[a] for a, b in ends if b == box):
                    drawn_wiring[(op, source, target)] += 1
        assert drawn_wiring == wiring
        concat = re.findall(r"\w+ (\d+)", lines[-1].split(" = ")[1])
        assert sorted(label[a] for a, b in ends if b == "out") == sorted(concat)


@pytest.mark.parametrize("name", list_genotypes())
def test_figure_numbers_are_the_json_indices(name):
    """The numbers drawn are the state indices the genotype's JSON uses (its two inputs drawn as symbols)."""
    data, d = genotype_to_dict(get_genotype(name)), drawn(name, "own")
    if "recurrent" in data:  # s0 is state 0, node i is state i; every index refers to a node
        cells = [(data["recurrent"], data["concat"], list(range(len(data["recurrent"]) + 1)), 0)]
    else:  # inputs 0 and 1, node (block) i is state 2 + i
        if "normal" in data:
            pairs = [(data["normal"], data["normal_concat"]), (data["reduce"], data["reduce_concat"])]
        else:
            pairs = [(data["cell"], [])]
        cells = [(p, c, list(range(2, 2 + len(p) // 2)), 2) for p, c in pairs]
    for panel, (pairs, concat, expected, first_node) in enumerate(cells):
        numbers = sorted(int(s) for s in d.labels(panel, "s") if s.isdigit())
        assert numbers == expected
        assert {index for _, index in pairs if index >= first_node} | set(concat) <= set(numbers)


def _segment_hits_rect(p, q, rect, eps=1e-6) -> bool:
    """Whether segment pq enters the open rectangle (x0, y0, x1, y1) (Liang-Barsky clipping)."""
    x0, y0, x1, y1 = rect[0] + eps, rect[1] + eps, rect[2] - eps, rect[3] - eps
    t0, t1 = 0.0, 1.0
    dx, dy = q[0] - p[0], q[1] - p[1]
    for den, num in ((-dx, p[0] - x0), (dx, x1 - p[0]), (-dy, p[1] - y0), (dy, y1 - p[1])):
        if den == 0:
            if num < 0:
                return False
        else:
            t = num / den
            if den < 0:
                t0 = max(t0, t)
            else:
                t1 = min(t1, t)
    return t0 < t1


@pytest.mark.parametrize("seed", range(25))
def test_own_layout_lines_never_cross_a_box_on_random_graphs(seed):
    rng = random.Random(seed)
    n = rng.randint(4, 14)
    boxes = [
        Box(f"b{i}", rng.uniform(15, 80), rng.uniform(12, 24), pull=0 < i < n - 1 and rng.random() < 0.4)
        for i in range(n)
    ]
    links = set()
    for i in range(1, n - 1):
        links |= {(f"b{j}", f"b{i}") for j in rng.sample(range(i), min(i, rng.randint(1, 2)))}
        if not boxes[i].pull or rng.random() < 0.3:
            links.add((f"b{i}", f"b{n - 1}"))
    links.add((f"b{n - 2}", f"b{n - 1}"))
    layout = layered_layout(boxes, sorted(links), first=["b0"], last=[f"b{n - 1}"])
    rects = {k: (b.left, b.y - b.height / 2, b.right, b.y + b.height / 2) for k, b in layout.boxes.items()}
    for i, (a, ra) in enumerate(rects.items()):
        assert 0 <= ra[0] and ra[2] <= layout.width and 0 <= ra[1] and ra[3] <= layout.height
        for b, rb in list(rects.items())[i + 1 :]:
            assert not (ra[0] < rb[2] and rb[0] < ra[2] and ra[1] < rb[3] and rb[1] < ra[3]), (a, b)
    assert sorted((r.source, r.target) for r in layout.routes) == sorted(links)
    for route in layout.routes:
        assert route.points[0][0] == pytest.approx(layout.boxes[route.source].right)
        assert route.points[-1][0] == pytest.approx(layout.boxes[route.target].left)
        for p, q in zip(route.points, route.points[1:]):
            assert q[0] >= p[0]  # left to right, never back
            for k, rect in rects.items():
                if k not in (route.source, route.target):
                    assert not _segment_hits_rect(p, q, rect), (route.source, route.target, k)


def test_the_dot_engine_without_graphviz_is_a_one_line_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "graphviz", None)
    with pytest.raises(ConfigError, match="graphviz extra"):
        genotype_figure(get_genotype("DARTS_V2"), engine="dot")
    with pytest.raises(ConfigError, match="unknown layout engine"):
        genotype_figure(get_genotype("DARTS_V2"), engine="neato")


def test_default_engine_is_our_own_without_the_dot_program(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert default_engine() == "own"
