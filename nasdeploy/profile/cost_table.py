"""Cost tables: MACs and measured latency of every candidate op at every cell position of a deployment net.

The table format and its readers only (json + numpy, no torch): the search imports this module; the
builder lives in cost_table_build.py. Entry [cell, edge, primitive] is the cost of that primitive on
that edge of that cell of the static network the search space transfers to; `fixed` entries are the
genotype-independent parts (stems, each cell's preprocessing and combine, pooling, classifier).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasdeploy.errors import ConfigError, LimitError
from nasdeploy.utils.files import write_json_atomic
from nasdeploy.utils.limits import read_json_limited

COST_TABLE_FORMAT = "nasdeploy.cost_table"
COST_TABLE_VERSION = 1
METRICS = ("macs", "latency")


@dataclass(frozen=True)
class CellSpace:
    """The cell search space a table covers: primitives (alpha column order), nodes, concat width."""

    name: str = "darts_cnn"
    primitives: tuple[str, ...] = ()
    steps: int = 4
    multiplier: int = 4

    @property
    def num_edges(self) -> int:
        """Edges per cell: node i has 2 + i incoming edges."""
        return sum(2 + i for i in range(self.steps))

    def edge_index(self, node: int, source: int) -> int:
        """Row of the alpha matrix for the edge from state `source` into intermediate node `node`."""
        return sum(2 + i for i in range(node)) + source

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"name": self.name, "primitives": list(self.primitives), "steps": self.steps, "multiplier": self.multiplier}


@dataclass(frozen=True)
class FixedEntry:
    """A genotype-independent part of the deployment network."""

    name: str
    kind: str  # stem | preprocess | combine | head
    shape: tuple[int, ...]  # input shape per sample
    macs: int
    latency_ms: float | None


@dataclass(frozen=True)
class CostTable:
    """Per-(cell, edge, primitive) MACs and latency of a deployment network, plus its fixed parts."""

    space: CellSpace
    net: dict[str, Any]  # family, channels, layers, num_classes, input_shape
    reductions: tuple[bool, ...]  # per cell of the deployment net
    macs: np.ndarray  # int64 [cells, edges, primitives]
    latency_ms: np.ndarray | None  # float64 [cells, edges, primitives], None for a MAC-only table
    shapes: tuple[tuple[tuple[int, ...], ...], ...]  # per cell, per edge: (C_in, C_out, stride, H, W)
    fixed: tuple[FixedEntry, ...]
    measurement: dict[str, Any] = field(default_factory=dict)  # backend, settings, environment, protocol

    def __post_init__(self) -> None:
        expected = (len(self.reductions), self.space.num_edges, len(self.space.primitives))
        if self.macs.shape != expected or (self.latency_ms is not None and self.latency_ms.shape != expected):
            raise ConfigError(f"cost table arrays do not have shape {expected} (cells, edges, primitives)")

    # -- readers -----------------------------------------------------------------------------
    def has(self, metric: str) -> bool:
        """True when the table holds `metric` (MACs always; latency only when it was measured)."""
        check_metric(metric)
        return metric == "macs" or self.latency_ms is not None

    def entries(self, metric: str) -> np.ndarray:
        """[cells, edges, primitives] values of `metric` (float64)."""
        if not self.has(metric):
            raise ConfigError("this cost table holds MACs only (built without a latency backend); "
                              "rebuild it with --backend or use metric: macs")
        return (self.macs if metric == "macs" else self.latency_ms).astype(np.float64)

    def fixed_total(self, metric: str) -> float:
        """Sum of the genotype-independent parts."""
        if not self.has(metric):
            self.entries(metric)
        return float(sum(f.macs if metric == "macs" else (f.latency_ms or 0.0) for f in self.fixed))

    def cell_type_weights(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """([edges, primitives] normal, reduce): each cell type's entries summed over its cells in the net.

        The supernet shares one alpha matrix per cell type across cells, so these are the coefficients
        of softmax(alpha) in the expected cost.
        """
        values = self.entries(metric)
        red = np.asarray(self.reductions, dtype=bool)
        return values[~red].sum(axis=0), values[red].sum(axis=0)

    def genotype_cost(self, genotype: Any, metric: str = "macs") -> float:
        """Cost of a CNN genotype's deployment network: fixed parts plus each chosen op at its position."""
        self.check_genotype(genotype)
        values = self.entries(metric)
        col = {p: k for k, p in enumerate(self.space.primitives)}
        total = self.fixed_total(metric)
        for cell, reduction in enumerate(self.reductions):
            edges = genotype.reduce if reduction else genotype.normal
            for k, (op, source) in enumerate(edges):
                total += values[cell, self.space.edge_index(k // 2, source), col[op]]
        return float(total) if metric == "latency" else float(int(round(total)))

    def check_genotype(self, genotype: Any) -> None:
        """Raise ConfigError unless the genotype's cells fit this table's space (nodes, concat, ops)."""
        space = self.space
        concat = tuple(range(2 + space.steps - space.multiplier, 2 + space.steps))
        for label, edges, cat in (("normal", genotype.normal, genotype.normal_concat),
                                  ("reduce", genotype.reduce, genotype.reduce_concat)):
            if len(edges) != 2 * space.steps or tuple(cat) != concat:
                raise ConfigError(f"genotype {label} cell ({len(edges) // 2} nodes, concat {list(cat)}) does not fit "
                                  f"the cost table's space ({space.steps} nodes, concat {list(concat)})")
            unknown = sorted({op for op, _ in edges if op not in space.primitives})
            if unknown:
                raise ConfigError(f"genotype {label} cell uses ops outside the cost table's space: {', '.join(unknown)}")

    # -- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON form: one readable entry per (cell, edge, primitive), the fixed parts, how it was measured."""
        entries = []
        prims = self.space.primitives
        for cell, reduction in enumerate(self.reductions):
            offset = 0
            for node in range(self.space.steps):
                for source in range(2 + node):
                    e = offset + source
                    for k, op in enumerate(prims):
                        entries.append({
                            "cell": cell, "reduction": reduction, "edge": e, "node": node, "input": source, "op": op,
                            "shape": list(self.shapes[cell][e]), "macs": int(self.macs[cell, e, k]),
                            "latency_ms": None if self.latency_ms is None else float(self.latency_ms[cell, e, k]),
                        })
                offset += 2 + node
        return {
            "format": COST_TABLE_FORMAT, "version": COST_TABLE_VERSION, "space": self.space.to_dict(), "net": self.net,
            "reductions": list(self.reductions), "measurement": self.measurement,
            "fixed": [{"name": f.name, "kind": f.kind, "shape": list(f.shape), "macs": f.macs, "latency_ms": f.latency_ms}
                      for f in self.fixed],
            "entries": entries,
        }


def check_metric(metric: str) -> None:
    """Raise ConfigError for a metric other than macs / latency."""
    if metric not in METRICS:
        raise ConfigError(f"cost metric must be one of {', '.join(METRICS)}, got {metric!r}")


def cost_table_from_dict(data: dict[str, Any], source: str = "cost table") -> CostTable:
    """Parse the JSON form back into a CostTable (one-line ConfigError when it is not one)."""
    if not isinstance(data, dict) or data.get("format") != COST_TABLE_FORMAT:
        raise ConfigError(f"{source} is not a nasdeploy cost table (format tag {COST_TABLE_FORMAT!r} missing)")
    if data.get("version") != COST_TABLE_VERSION:
        raise ConfigError(f"{source} has cost table version {data.get('version')!r}; this nasdeploy reads {COST_TABLE_VERSION}")
    try:
        s = data["space"]
        space = CellSpace(str(s["name"]), tuple(s["primitives"]), int(s["steps"]), int(s["multiplier"]))
        reductions = tuple(bool(r) for r in data["reductions"])
        shape = (len(reductions), space.num_edges, len(space.primitives))
        macs = np.zeros(shape, dtype=np.int64)
        lat = np.zeros(shape, dtype=np.float64)
        has_latency = True
        shapes: list[list[tuple[int, ...]]] = [[() for _ in range(space.num_edges)] for _ in reductions]
        col = {p: k for k, p in enumerate(space.primitives)}
        seen = np.zeros(shape, dtype=bool)
        for e in data["entries"]:
            idx = (int(e["cell"]), int(e["edge"]), col[e["op"]])
            macs[idx] = int(e["macs"])
            if e.get("latency_ms") is None:
                has_latency = False
            else:
                lat[idx] = float(e["latency_ms"])
            shapes[idx[0]][idx[1]] = tuple(int(v) for v in e["shape"])
            seen[idx] = True
        if not seen.all():
            raise ConfigError(f"{source} lacks {int((~seen).sum())} of its {seen.size} entries")
        fixed = tuple(FixedEntry(str(f["name"]), str(f["kind"]), tuple(f["shape"]), int(f["macs"]),
                                 None if f.get("latency_ms") is None else float(f["latency_ms"])) for f in data["fixed"])
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{source} is malformed ({type(exc).__name__}: {exc})") from None
    return CostTable(space, dict(data.get("net") or {}), reductions, macs, lat if has_latency else None,
                     tuple(tuple(c) for c in shapes), fixed, dict(data.get("measurement") or {}))


def load_cost_table(path: str | os.PathLike[str]) -> CostTable:
    """Read a cost table JSON file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"cost table {p} does not exist (build one with: nasdeploy profile --cost-table darts_cnn)")
    try:
        data = read_json_limited(p, "cost table")
    except LimitError:
        raise
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read cost table {p}: {exc}") from None
    return cost_table_from_dict(data, str(p))


def save_cost_table(table: CostTable, path: str | os.PathLike[str]) -> Path:
    """Write a cost table as JSON atomically."""
    return write_json_atomic(path, table.to_dict(), indent=1)

