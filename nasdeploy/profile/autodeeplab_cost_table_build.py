"""Build the Auto-DeepLab cost table: MACs of every cell context, transition, stem and head of a deployment net.

Walks every state the network path can reach (spaces/autodeeplab_cost_table.py: level, size, previous
widths, stride-4 feature) for the static network of nets/autodeeplab.py at a given filter multiplier,
input size and head widths, and counts each distinct piece once with the profiler's counter
(FlopCounterMode total / 2, as utils.model_cost.forward_macs) on the very modules the network builds
(the cell's pre-processing, build_autodeeplab_op, AutoDeepLabStem, ASPP, DeepLabV3PlusDecoder). Large pieces
run on meta tensors, so building costs no real convolutions even at 1024x2048 (about 6 s for the
12-layer Auto-DeepLab-S net there); small ones run on real CPU tensors, which is faster and counts the
same. Cached as JSON per network spec and library versions, like the DARTS cost tables.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from nasdeploy._version import __version__
from nasdeploy.errors import ConfigError, LimitError
from nasdeploy.genotypes.autodeeplab import AUTODEEPLAB_PRIMITIVES, NUM_LEVELS
from nasdeploy.nets.autodeeplab import AutoDeepLabCell, AutoDeepLabStem, default_aspp_rates
from nasdeploy.nets.seg_heads import ASPP, DeepLabV3PlusDecoder
from nasdeploy.ops import build_autodeeplab_op
from nasdeploy.profile.cost_table_build import default_cache_dir
from nasdeploy.spaces.autodeeplab_cost_table import AutoDeepLabCostTable, autodeeplab_cost_table_from_dict
from nasdeploy.utils.files import write_json_atomic
from nasdeploy.utils.limits import read_json_limited
from nasdeploy.utils.model_cost import forward_macs

COST_TABLE_FORMAT = "nasdeploy.autodeeplab_cost_table"
COST_TABLE_VERSION = 1
_META = torch.device("meta")
_REAL_LIMIT = 1 << 18  # elements per input below which pieces are counted on real CPU tensors


@dataclass(frozen=True)
class AutoDeepLabNetSpec:
    """The static segmentation network a cost table describes (AutoDeepLabNet's cost-relevant arguments)."""

    layers: int = 12
    blocks: int = 5
    filter_multiplier: int = 20
    input_size: tuple[int, int] = (1024, 2048)
    num_classes: int = 19
    stem_channels: tuple[int, int, int] = (64, 64, 128)
    aspp_channels: int = 256
    aspp_rates: tuple[int, ...] | None = None  # None: 96 / stride * (1, 2, 3) of the last level
    decoder_channels: int = 256
    low_level_channels: int = 48
    separable_heads: bool = False

    def __post_init__(self) -> None:
        for key in ("layers", "blocks", "filter_multiplier", "num_classes", "aspp_channels", "decoder_channels",
                    "low_level_channels"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"autodeeplab cost table: {key} must be a positive integer, got {value!r}")
        if len(self.input_size) != 2 or min(self.input_size) < 2:
            raise ConfigError(f"autodeeplab cost table: input_size must be (H, W) >= 2, got {self.input_size}")


def _device(*shapes: Sequence[int]) -> torch.device:
    """Meta tensors for large inputs (no real convolutions); small ones run faster for real (same count)."""
    return _META if max(int(np.prod(s)) for s in shapes) > _REAL_LIMIT else torch.device("cpu")


def _inputs(device: torch.device, *shapes: Sequence[int]) -> list[torch.Tensor]:
    return [torch.zeros((1, *s), device=device) for s in shapes]


def _macs(module: nn.Module, *shapes: Sequence[int]) -> int:
    device = next(iter(module.parameters()), torch.empty(0, device=_device(*shapes))).device
    return forward_macs(module, *_inputs(device, *shapes))


class _Counter:
    """Counts each distinct piece once (meta tensors: shapes only)."""

    def __init__(self, spec: AutoDeepLabNetSpec):
        self.spec = spec
        self.cache: dict[Any, Any] = {}
        self.contexts: dict[tuple[int, ...], int] = {}
        self.cell_ops: list[np.ndarray] = []
        self.out_size: dict[int, tuple[int, int]] = {}

    def _once(self, key: Any, compute: Any) -> Any:
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    def op(self, op: str, c: int, stride: int, h: int, w: int) -> tuple[int, tuple[int, int]]:
        def compute() -> tuple[int, tuple[int, int]]:
            device = _device((c, h, w))
            with device:
                module = build_autodeeplab_op(op, c, stride).eval()
            with torch.no_grad():
                out = module(*_inputs(device, (c, h, w)))
            return (0 if op == "none" else _macs(module, (c, h, w))), (int(out.shape[-2]), int(out.shape[-1]))
        return self._once(("op", op, c, stride, h, w), compute)

    def context(self, level: int, stride: int, h: int, w: int) -> int:
        """Context id of a cell at `level` with this stride and input size (its op costs counted on first use)."""
        key = (level, stride, h, w)
        if key not in self.contexts:
            c = self.spec.filter_multiplier * 2**level
            sizes = {self.op(op, c, stride, h, w)[1] for op in AUTODEEPLAB_PRIMITIVES}
            if len(sizes) != 1:
                raise ConfigError(f"autodeeplab ops disagree on the output size at {key}: {sorted(sizes)}")
            ho, wo = sizes.pop()
            edges = []
            for i in range(self.spec.blocks):
                for k in range(2 + i):
                    shape = (c, stride, h, w) if k < 2 else (c, 1, ho, wo)
                    edges.append([self.op(op, *shape)[0] for op in AUTODEEPLAB_PRIMITIVES])
            self.contexts[key] = len(self.cell_ops)
            self.cell_ops.append(np.asarray(edges, dtype=np.float64))
            self.out_size[self.contexts[key]] = (ho, wo)
        return self.contexts[key]

    def preprocess(self, c_pp: int, c_prev: int, c: int, stride: int, h: int, w: int) -> int:
        def compute() -> int:
            with _device((max(c_pp, c_prev), h, w)):
                cell = AutoDeepLabCell([("skip_connect", 0), ("skip_connect", 1)], c_pp, c_prev, c, stride)
            return _macs(cell.preprocess0, (c_pp, h, w)) + _macs(cell.preprocess1, (c_prev, h, w))
        return self._once(("pre", c_pp, c_prev, c, stride, h, w), compute)

    def head(self, level: int, c: int, h: int, w: int, low: tuple[int, int, int]) -> int:
        s = self.spec

        def compute() -> int:
            rates = s.aspp_rates if s.aspp_rates is not None else default_aspp_rates(level)
            with _device((c, h, w), low):
                aspp = ASPP(c, s.aspp_channels, rates, separable=s.separable_heads, dropout=0.0)
                decoder = DeepLabV3PlusDecoder(low[0], s.aspp_channels, s.num_classes, low_channels=s.low_level_channels,
                                               channels=s.decoder_channels, separable=s.separable_heads)
            return _macs(aspp, (c, h, w)) + _macs(decoder, (s.aspp_channels, h, w), low)
        return self._once(("head", level, c, h, w, low), compute)


def build_autodeeplab_cost_table(spec: AutoDeepLabNetSpec) -> AutoDeepLabCostTable:
    """Count every piece of the network for every reachable path state (MACs)."""
    counter = _Counter(spec)
    device = _device((max(spec.stem_channels), *spec.input_size))
    with device:
        stem = AutoDeepLabStem(spec.stem_channels).eval()
    with torch.no_grad():
        h_prev, h = stem(*_inputs(device, (3, *spec.input_size)))
    stem_macs = _macs(stem, (3, *spec.input_size))
    c_stem = int(h.shape[1])
    # State: (level, H^{l-2} width, H^{l-1} width, height, width, stride-4 feature (channels, height, width)).
    start = (0, int(h_prev.shape[1]), c_stem, int(h.shape[-2]), int(h.shape[-1]), (c_stem, int(h.shape[-2]), int(h.shape[-1])))
    states: list[list[tuple[Any, ...]]] = [[start]]
    next_state, context, transition = [], [], []
    for _ in range(spec.layers):
        index: dict[tuple[Any, ...], int] = {}
        nxt = np.full((len(states[-1]), 3), -1, dtype=np.int64)
        ctx = np.full((len(states[-1]), 3), -1, dtype=np.int64)
        fixed = np.zeros((len(states[-1]), 3), dtype=np.float64)
        for s, (level, c_pp, c_prev, hh, ww, low) in enumerate(states[-1]):
            for d in range(3):
                target = level + d - 1
                if not 0 <= target < NUM_LEVELS:
                    continue
                stride = 2 if target == level + 1 else 1
                h1, w1 = ((hh - 1) * 2 + 1, (ww - 1) * 2 + 1) if target == level - 1 else (hh, ww)
                c = spec.filter_multiplier * 2**target
                k = counter.context(target, stride, h1, w1)
                ho, wo = counter.out_size[k]
                c_out = spec.blocks * c
                state = (target, c_prev, c_out, ho, wo, (c_out, ho, wo) if target == 0 else low)
                nxt[s, d] = index.setdefault(state, len(index))
                ctx[s, d] = k
                fixed[s, d] = counter.preprocess(c_pp, c_prev, c, stride, h1, w1)
        states.append(list(index))
        next_state.append(nxt)
        context.append(ctx)
        transition.append(fixed)
    head = np.array([counter.head(level, c_prev, hh, ww, low) for level, _, c_prev, hh, ww, low in states[-1]],
                    dtype=np.float64)
    return AutoDeepLabCostTable(
        blocks=spec.blocks, stem=float(stem_macs), contexts=tuple(counter.contexts),
        cell_ops=np.stack(counter.cell_ops), levels=tuple(tuple(s[0] for s in layer) for layer in states),
        next_state=tuple(next_state), context=tuple(context), transition=tuple(transition), head=head,
        primitives=AUTODEEPLAB_PRIMITIVES, metric="macs", net={"family": "segmentation", **_spec_dict(spec)})


def _spec_dict(spec: AutoDeepLabNetSpec) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(spec).items()}


def autodeeplab_cost_table_cache_key(spec: AutoDeepLabNetSpec) -> str:
    """A hash of what the table depends on: the network spec and the library versions."""
    key = {"format": COST_TABLE_FORMAT, "version": COST_TABLE_VERSION, "spec": _spec_dict(spec),
           "nasdeploy": __version__, "torch": torch.__version__}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def save_autodeeplab_cost_table(table: AutoDeepLabCostTable, path: str | os.PathLike[str]) -> Path:
    """Write the cost table as JSON atomically."""
    return write_json_atomic(path, {"format": COST_TABLE_FORMAT, "version": COST_TABLE_VERSION, **table.to_dict()})


def load_autodeeplab_cost_table(path: str | os.PathLike[str]) -> AutoDeepLabCostTable:
    """Read a cost table JSON file (ConfigError when it is missing or not one)."""
    p = Path(path)
    try:
        data = read_json_limited(p, "autodeeplab cost table")
    except LimitError:
        raise
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read autodeeplab cost table {p}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != COST_TABLE_FORMAT or data.get("version") != COST_TABLE_VERSION:
        raise ConfigError(f"{p} is not a nasdeploy autodeeplab cost table (format {COST_TABLE_FORMAT!r} "
                          f"version {COST_TABLE_VERSION})")
    return autodeeplab_cost_table_from_dict(data, str(p))


def build_or_load_autodeeplab_cost_table(spec: AutoDeepLabNetSpec, cache_dir: str | os.PathLike[str] | None = None,
                                         rebuild: bool = False) -> AutoDeepLabCostTable:
    """The cached cost table of `spec`, built and cached on a miss (an unreadable cache entry is rebuilt)."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"autodeeplab-segmentation-macs-{autodeeplab_cost_table_cache_key(spec)}.json"
    if path.is_file() and not rebuild:
        try:
            return load_autodeeplab_cost_table(path)
        except ConfigError:
            pass
    table = build_autodeeplab_cost_table(spec)
    save_autodeeplab_cost_table(table, path)
    return table
