"""Build cost tables: walk the deployment network's shapes, count MACs, time each distinct op shape once.

MACs come from the profiler's own counter (complexity.model_complexity: FlopCounterMode total / 2), so
a genotype's table sum equals the profiler's count of its network exactly. Latency: each distinct
(op, C_in, C_out, stride, H, W) (and each distinct fixed part) is built on its own, exported as a tiny
ONNX graph for onnxruntime backends (run as a module for torch backends), timed with the profiler's
latency protocol (profile/latency.py), and the per-call overhead of an empty graph is subtracted.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from nasdeploy._version import __version__
from nasdeploy.errors import ConfigError, NasDeployError
from nasdeploy.genotypes import CNN_PRIMITIVES, CNNGenotype
from nasdeploy.profile.complexity import MAC_CONVENTION, TORCH_COUNTER, model_complexity
from nasdeploy.profile.cost_table import CellSpace, CostTable, FixedEntry, load_cost_table, save_cost_table
from nasdeploy.profile.environment import collect_environment, cpu_model
from nasdeploy.profile.latency import ORT_BACKENDS, measure_latency, parse_backends
from nasdeploy.profile.protocol import LatencyConfig

DARTS_CNN_CELLS = CellSpace("darts_cnn", CNN_PRIMITIVES, 4, 4)  # named by the darts_cnn entry of nasdeploy.spaces.table
TABLE_LATENCY = LatencyConfig(warmup=5, runs=40)
_ZERO_MAC_OPS = ("none",)  # a derived cell never keeps 'none': its edge is absent from the static net


def cell_space(space: str | CellSpace) -> CellSpace:
    """The cell description of a space's cost tables, from its name (its `cost_cells` in the table of spaces)."""
    from nasdeploy.spaces import table

    if isinstance(space, CellSpace):
        return space
    entry = table.get_space(space)
    if not entry.cost_cells:
        supported = [s.name for s in table.SPACES.values() if s.cost_cells]
        raise ConfigError(f"the {entry.name} space has no cost table yet (supported: {', '.join(supported)})")
    return table.resolve(entry.cost_cells)


class _Combine(nn.Module):
    """The cell's parameter-free glue for latency: one add per intermediate node, then the concat."""

    def __init__(self, steps: int, multiplier: int):
        super().__init__()
        self.steps, self.multiplier = steps, multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = [x]
        for _ in range(self.steps):
            states.append(states[-1] + x)
        return torch.cat(states[-self.multiplier:], dim=1)


class _Head(nn.Module):
    """The network's forward_head (global pooling, flatten, classifier) as a module of its own."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.global_pooling = model.global_pooling
        self.classifier = model.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.global_pooling(x).flatten(1))


@dataclass(frozen=True)
class _Layout:
    """Shapes of the deployment network, read from a forward pass of a probe network."""

    model: nn.Module
    net: dict[str, Any]
    reductions: tuple[bool, ...]
    edge_shapes: tuple[tuple[tuple[int, ...], ...], ...]  # per cell, per edge: (C_in, C_out, stride, H, W)
    fixed: tuple[tuple[str, str, nn.Module, tuple[int, ...]], ...]  # name, kind, module, input shape


def _probe_genotype(space: CellSpace) -> CNNGenotype:
    edges = tuple(("max_pool_3x3", j) for _ in range(space.steps) for j in (0, 1))
    concat = tuple(range(2 + space.steps - space.multiplier, 2 + space.steps))
    return CNNGenotype(edges, concat, edges, concat, name="cost-table-probe")


def deployment_layout(space: CellSpace, net: str = "imagenet", *, channels: int | None = None,
                      layers: int | None = None, num_classes: int | None = None,
                      input_size: Sequence[int] | None = None) -> _Layout:
    """Every cell's edge shapes and the fixed parts of network `net`, from hooks on one probe forward."""
    from nasdeploy.nets import build_network

    model = build_network(_probe_genotype(space), net, channels=channels, layers=layers, num_classes=num_classes,
                          auxiliary=False).eval()
    cfg = model.default_cfg
    shape = tuple(input_size) if input_size is not None else tuple(cfg.input_size)
    seen: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    order: list[str] = []
    handles = []

    def record(name: str):
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            seen[name] = (tuple(args[0].shape[1:]), tuple(output.shape[1:]))
            order.append(name)
        return hook

    for name, child in model.named_children():
        if name != "cells":
            handles.append(child.register_forward_hook(record(name)))
    for i, cell in enumerate(model.cells):
        for part in ("preprocess0", "preprocess1"):
            handles.append(getattr(cell, part).register_forward_hook(record(f"cells.{i}.{part}")))
        handles.append(cell.register_forward_hook(record(f"cells.{i}")))
    try:
        with torch.no_grad():
            model(torch.zeros((1, *shape)))
    finally:
        for h in handles:
            h.remove()

    stems = [n for n in order if not n.startswith("cells") and n not in ("global_pooling", "classifier")]
    fixed: list[tuple[str, str, nn.Module, tuple[int, ...]]] = [(n, "stem", getattr(model, n), seen[n][0]) for n in stems]
    reductions, edge_shapes = [], []
    for i, cell in enumerate(model.cells):
        c = seen[f"cells.{i}.preprocess1"][1][0]
        ins = [seen[f"cells.{i}.preprocess{k}"][1] for k in (0, 1)]
        out_hw = seen[f"cells.{i}"][1][1:]
        stride = 2 if cell.reduction else 1
        per_edge = []
        for node in range(space.steps):
            for source in range(2 + node):
                _, h, w = ins[source] if source < 2 else (c, *out_hw)
                per_edge.append((c, c, stride if source < 2 else 1, h, w))
        reductions.append(bool(cell.reduction))
        edge_shapes.append(tuple(per_edge))
        for k in (0, 1):
            fixed.append((f"cells.{i}.preprocess{k}", "preprocess", getattr(cell, f"preprocess{k}"),
                          seen[f"cells.{i}.preprocess{k}"][0]))
        fixed.append((f"cells.{i}.combine", "combine", _Combine(space.steps, space.multiplier), (c, *out_hw)))
    fixed.append(("head", "head", _Head(model), seen[f"cells.{len(model.cells) - 1}"][1]))
    info = {"family": cfg.name, "channels": cfg.channels, "layers": cfg.layers, "num_classes": cfg.num_classes,
            "input_shape": list(shape)}
    return _Layout(model, info, tuple(reductions), tuple(edge_shapes), tuple(fixed))


def _op_module(op: str, shape: tuple[int, ...]) -> nn.Module:
    from nasdeploy.ops import build_op

    c_in, _, stride, _, _ = shape
    return build_op(op, c_in, stride, affine=True).eval()


class _Timer:
    """Times modules on one backend with the profiler's protocol, each distinct key once."""

    def __init__(self, backend: str, cfg: LatencyConfig, workdir: Path, progress: bool):
        self.backend, self.cfg, self.workdir, self.progress = backend, cfg, workdir, progress
        self.settings: dict[str, Any] = {}
        self.count = 0
        self.overhead_ms = 0.0
        self.overhead_ms = self.time(_op_module("skip_connect", (1, 1, 1, 1, 1)), (1, 1, 1), raw=True)

    def time(self, module: nn.Module, shape: tuple[int, ...], raw: bool = False) -> float:
        """Median ms of one call of `module` on a (1, *shape) input, less the empty-graph overhead."""
        module = copy.deepcopy(module).eval()
        onnx_path = None
        if self.backend in ORT_BACKENDS:
            from nasdeploy.export.onnx import export_onnx

            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                onnx_path = export_onnx(module, self.workdir / f"op{self.count}.onnx", input_size=shape,
                                        dynamic_batch=False, dynamic_spatial=False)
        result = measure_latency([self.backend], shape, self.cfg, model=module, onnx_path=onnx_path)[self.backend]
        if onnx_path is not None:
            onnx_path.unlink(missing_ok=True)
        self.count += 1
        if not result.ok:
            raise NasDeployError(f"latency backend {self.backend} {result.status} here: {result.note}")
        self.settings = result.settings
        if self.progress and self.count % 10 == 0:
            print(f"  timed {self.count} distinct shapes on {self.backend}", file=sys.stderr)
        return float(result.median_ms) if raw else max(0.0, float(result.median_ms) - self.overhead_ms)


def _one_backend(backend: str | None) -> str | None:
    """One latency backend name (None: MAC-only), validated against the profiler's backends."""
    if backend is None or backend in ("none", "macs"):
        return None
    names = parse_backends(backend)
    if len(names) != 1:
        raise ConfigError(f"a cost table is measured on one latency backend, got {backend!r}")
    return names[0]


def build_cost_table(space: str | CellSpace = "darts_cnn", backend: str | None = "ort-cpu-1t", *,
                     net: str = "imagenet", channels: int | None = None, layers: int | None = None,
                     num_classes: int | None = None, input_size: Sequence[int] | None = None,
                     latency_config: LatencyConfig = TABLE_LATENCY, progress: bool = False) -> CostTable:
    """Measure a cost table: MACs always, latency on `backend` (None: a MAC-only table)."""
    spec = cell_space(space)
    backend = _one_backend(backend)
    start = time.perf_counter()
    layout = deployment_layout(spec, net, channels=channels, layers=layers, num_classes=num_classes,
                               input_size=input_size)
    macs_of: dict[Any, int] = {}
    lat_of: dict[Any, float] = {}
    with tempfile.TemporaryDirectory(prefix="nasdeploy-cost-table-") as tmp:
        timer = _Timer(backend, latency_config, Path(tmp), progress) if backend else None

        def cost(key: Any, build: Any, shape: tuple[int, ...], zero: bool = False) -> tuple[int, float | None]:
            if key not in macs_of:
                module = build()
                macs_of[key] = 0 if zero else model_complexity(module, shape, activations=False).macs
                if timer is not None:
                    lat_of[key] = 0.0 if zero else timer.time(module, shape)
            return macs_of[key], lat_of.get(key)

        cells, edges, prims = len(layout.reductions), spec.num_edges, len(spec.primitives)
        macs = np.zeros((cells, edges, prims), dtype=np.int64)
        lat = np.zeros((cells, edges, prims), dtype=np.float64)
        for i, per_edge in enumerate(layout.edge_shapes):
            for e, shp in enumerate(per_edge):
                for k, op in enumerate(spec.primitives):
                    key = ("op", op, shp)
                    m, t = cost(key, lambda op=op, shp=shp: _op_module(op, shp), shp[:1] + shp[3:],
                                zero=op in _ZERO_MAC_OPS)
                    macs[i, e, k], lat[i, e, k] = m, t or 0.0
        fixed = []
        for name, kind, module, shp in layout.fixed:
            m, t = cost(("fixed", kind, repr(module), shp), lambda module=module: module, shp)
            fixed.append(FixedEntry(name, kind, tuple(shp), m, t))
    measurement: dict[str, Any] = {
        "backend": backend, "macs_convention": MAC_CONVENTION, "counter": TORCH_COUNTER,
        "distinct_shapes": len(macs_of),
        "build_time_s": round(time.perf_counter() - start, 2),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "nasdeploy": __version__,
    }
    if timer is not None:
        measurement.update({
            "latency_protocol": {**{k: v for k, v in asdict(latency_config).items() if k != "progress"},
                                 "statistic": "median ms per call at batch 1, less the empty-graph overhead",
                                 "empty_graph_overhead_ms": timer.overhead_ms,
                                 "graphs": "one ONNX graph per distinct shape" if backend in ORT_BACKENDS
                                           else "one PyTorch module per distinct shape"},
            "settings": timer.settings,
            "none_op": "latency 0 and MACs 0: a derived cell drops 'none' edges",
            "load_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "environment": collect_environment(),
        })
    return CostTable(spec, layout.net, layout.reductions, macs, lat if timer is not None else None,
                     layout.edge_shapes, tuple(fixed), measurement)


def cost_table_cache_key(space: CellSpace, backend: str | None, net: dict[str, Any],
                         latency_config: LatencyConfig) -> str:
    """A hash of what a table depends on: space, net, backend, machine and library versions."""
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    key: dict[str, Any] = {"space": space.to_dict(), "net": net, "backend": backend, "nasdeploy": __version__,
                           "torch": torch.__version__}
    if backend is not None:
        key.update({"cpu": cpu_model(), "logical_cpus": os.cpu_count(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "versions": {n: version(n) for n in ("onnxruntime", "onnxruntime-gpu", "onnx", "tensorrt")},
                    "latency": {k: v for k, v in asdict(latency_config).items() if k != "progress"}})
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """$NASDEPLOY_CACHE_DIR/cost_tables, else ~/.cache/nasdeploy/cost_tables."""
    base = os.environ.get("NASDEPLOY_CACHE_DIR") or str(Path.home() / ".cache" / "nasdeploy")
    return Path(base) / "cost_tables"


def build_or_load_cost_table(space: str | CellSpace = "darts_cnn", backend: str | None = "ort-cpu-1t", *,
                             net: str = "imagenet", channels: int | None = None, layers: int | None = None,
                             num_classes: int | None = None, input_size: Sequence[int] | None = None,
                             cache_dir: str | os.PathLike[str] | None = None,
                             latency_config: LatencyConfig = TABLE_LATENCY, rebuild: bool = False,
                             progress: bool = False) -> CostTable:
    """The cached table for (space, net, backend, machine, versions), measured and cached on a miss."""
    from nasdeploy.nets import get_net_config

    spec = cell_space(space)
    cfg = get_net_config(net)
    net_key = {"net": net, "channels": channels or cfg.channels, "layers": layers or cfg.layers,
               "num_classes": num_classes or cfg.num_classes,
               "input_size": list(input_size) if input_size is not None else list(cfg.input_size)}
    backend = _one_backend(backend)
    key = cost_table_cache_key(spec, backend, net_key, latency_config)
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / f"{spec.name}-{net}-{backend or 'macs'}-{key}.json"
    if path.is_file() and not rebuild:
        try:
            return load_cost_table(path)
        except ConfigError:
            pass  # an unreadable cache entry is rebuilt
    table = build_cost_table(spec, backend, net=net, channels=channels, layers=layers,
                             num_classes=num_classes, input_size=input_size, latency_config=latency_config,
                             progress=progress)
    table.measurement["cache_key"] = key
    save_cost_table(table, path)
    return table


def cost_table_cli(space: str, latency: str | None, *, net: str, channels: int | None, layers: int | None,
                   num_classes: int | None, input_size: int | Sequence[int] | None, json_path: str | None,
                   targets: Sequence[str] = ()) -> str:
    """`nasdeploy profile --cost-table SPACE`: build or reuse the cached table, write it, sum it for targets."""
    from nasdeploy.genotypes import resolve_genotype

    shape = (3, input_size, input_size) if isinstance(input_size, int) else input_size
    backend = _one_backend(latency)
    table = build_or_load_cost_table(space, backend, net=net, channels=channels, layers=layers,
                                     num_classes=num_classes, input_size=shape, progress=True)
    m = table.measurement
    lines = [f"cost table {table.space.name} on {table.net['family']} C={table.net['channels']} L={table.net['layers']} "
             f"input {'x'.join(map(str, table.net['input_shape']))}: {table.macs.size} entries + {len(table.fixed)} fixed, "
             f"{m.get('distinct_shapes')} distinct shapes, backend {backend or 'none (MACs only)'}, "
             f"built in {m.get('build_time_s')} s at {m.get('built_at')}"]
    if json_path:
        lines.append(f"wrote {save_cost_table(table, json_path)}")
    for target in targets:
        genotype = resolve_genotype(target, expected_kind="cnn_cell")
        text = f"  {genotype.name or target}: {int(table.genotype_cost(genotype, 'macs')):,} MACs"
        if table.has("latency"):
            text += f", {table.genotype_cost(genotype, 'latency'):.3f} ms (sum of per-op {backend} medians)"
        lines.append(text)
    return "\n".join(lines)
