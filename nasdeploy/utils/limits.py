"""Every limit on an input in one place: what it bounds, why its default is what it is, how to raise it.

Loaders check their input against these before allocating: a file's size before reading it, nesting
depth before parsing, node counts before building objects, an image's pixels from its header before
decoding, dataset and network sizes from config numbers before generating or building. A refused input
gives one LimitError line naming the limit and, where a user may legitimately need more, the environment
variable that raises it (NASDEPLOY_MAX_<NAME>, read at every check: nothing is cached).
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from nasdeploy.errors import LimitError

ENV_PREFIX = "NASDEPLOY_MAX_"
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


@dataclass(frozen=True)
class Limit:
    """One bound: name, default, unit and the reason for the default; raisable ones read NASDEPLOY_MAX_<NAME>."""

    name: str
    default: int
    unit: str
    why: str
    raisable: bool = True

    @property
    def env(self) -> str:
        """The environment variable that raises this limit."""
        return ENV_PREFIX + self.name.upper()

    def value(self, environ: Mapping[str, str] | None = None) -> int:
        """The bound in force now: the environment's value when set (raisable limits only), else the default."""
        if not self.raisable:
            return self.default
        raw = (os.environ if environ is None else environ).get(self.env, "").strip()
        if not raw:
            return self.default
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise LimitError(f"{self.env}={brief(raw)} must be a positive whole number ({self.unit})")
        return value

    def check(self, what: str, amount: int) -> None:
        """Raise a one-line LimitError when `amount` (of `what`) is over the bound."""
        limit = self.value()
        if amount > limit:
            raise self.exceeded(what, amount, limit)

    def exceeded(self, what: str, amount: int | None = None, limit: int | None = None) -> LimitError:
        """The error for `what` over this limit: it names the limit and how to raise it (`amount` when known)."""
        limit = self.value() if limit is None else limit
        how = f"set {self.env}=N to raise it" if self.raisable else "no valid input needs more"
        subject = f"{what}: {_amount(amount, self.unit)}" if amount is not None else what
        return LimitError(f"{subject} is over the limit of {_amount(limit, self.unit)} ({self.name}); {how}")


def _amount(n: int, unit: str) -> str:
    if unit == "bytes":
        for size, name in ((GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")):
            if n >= size:
                return f"{n / size:,.1f} {name}"
        return f"{n} bytes"
    return f"{n:,} {unit}"


CONFIG_BYTES = Limit("config_bytes", MIB, "bytes", "a config or pipeline file is a few KB")
GENOTYPE_BYTES = Limit("genotype_bytes", MIB, "bytes", "a genotype file with its meta is about 1 KB")
JSON_BYTES = Limit("json_bytes", 64 * MIB, "bytes",
                   "records the tool reads back (done.json, pipeline_state.json, vocab.json, cost tables) are a "
                   "few MB; parsed JSON takes about 10x its size in memory")
NESTING_DEPTH = Limit("nesting_depth", 32, "levels",
                      "configs nest 4 levels and genotypes 3; each level costs parser stack frames, so this keeps "
                      "every parser far from Python's recursion limit", raisable=False)
YAML_ALIASES = Limit("yaml_aliases", 100, "aliases", "configs need none, or a few to reuse a section")
YAML_NODES = Limit("yaml_nodes", 100_000, "nodes",
                   "a config holds under 1,000 values; an alias counts as the nodes it stands for, so a 'billion "
                   "laughs' file is refused while it is read, before anything is expanded")
GENOTYPE_NODES = Limit("genotype_nodes", 64, "nodes", "published cells have 4-8 nodes; cost grows with its square")
IMAGE_PIXELS = Limit("image_pixels", 8192 * 8192, "pixels",
                     "Cityscapes frames are 2 MP and photos rarely pass 50 MP; 64 MP decode to 192 MiB of RGB "
                     "(Pillow's decompression-bomb guard is set from this)")
INPUT_SIDE = Limit("input_side", 8192, "pixels", "a network input's height or width; Cityscapes is 1024x2048")
CHANNELS = Limit("channels", 4096, "channels", "DARTS networks start with 16-48 channels (x4 after two reductions)")
LAYERS = Limit("layers", 256, "layers", "DARTS networks have 8-20 cells, Auto-DeepLab 12 layers")
NETWORK_BYTES = Limit("network_bytes", 16 * GIB, "bytes",
                      "parameters and one image's activations, estimated from config numbers before a network is "
                      "built; Auto-DeepLab on full Cityscapes frames is about 11 GiB, DARTS on CIFAR 0.1 GiB")
GENERATED_DATA_BYTES = Limit("generated_data_bytes", 2 * GIB, "bytes",
                             "the demo datasets are generated in memory; the default demo is 15 MiB")
DATA_FILE_BYTES = Limit("data_file_bytes", GIB, "bytes",
                        "data files are read whole: a CIFAR batch is 30-160 MB, a PTB split 5 MB")
METADATA_CHARS = Limit("metadata_chars", 64 * KIB, "characters",
                       "ONNX metadata values (shapes, name scopes) are under 1 KB")

LIMITS: tuple[Limit, ...] = (CONFIG_BYTES, GENOTYPE_BYTES, JSON_BYTES, NESTING_DEPTH, YAML_ALIASES, YAML_NODES,
                             GENOTYPE_NODES, IMAGE_PIXELS, INPUT_SIDE, CHANNELS, LAYERS, NETWORK_BYTES,
                             GENERATED_DATA_BYTES, DATA_FILE_BYTES, METADATA_CHARS)

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
# Seeds are offset and multiplied (seed * 100_003 + epoch, seed + split offsets) and fed to torch and numpy,
# whose seeds are 64-bit; 32 bits leave room for that, and are numpy's legacy seed range.
SEED_MAX = (1 << 32) - 1

_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong, _SHORT.maxlevel = 40, 40, 40, 3


def brief(value: Any) -> str:
    """repr() cut to a few dozen characters: an error line never prints an expanded or huge input."""
    return _SHORT.repr(value)


def check_int64(what: str, value: int) -> None:
    """An integer that must fit a signed 64-bit integer (torch, numpy, JSON readers elsewhere)."""
    if not INT64_MIN <= value <= INT64_MAX:
        raise LimitError(f"{what} must fit in 64 bits (-2**63 .. 2**63-1), got {brief(value)}")


def check_seed(what: str, value: int) -> None:
    """A seed: an integer in 0 .. 2**32-1."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise LimitError(f"{what} must be a whole number in 0 .. {SEED_MAX} (32 bits), got {brief(value)}")


def check_input_size(what: str, height: int, width: int) -> None:
    """A network input's (H, W): each side within INPUT_SIDE."""
    INPUT_SIDE.check(f"{what} height", height)
    INPUT_SIDE.check(f"{what} width", width)


def check_generated_data(what: str, count: int, item_bytes: int) -> None:
    """A dataset generated in memory: `count` items of about `item_bytes` each, within GENERATED_DATA_BYTES."""
    GENERATED_DATA_BYTES.check(f"{what} ({count:,} items of {_amount(item_bytes, 'bytes')})", count * item_bytes)


def read_bytes_limited(path: str | os.PathLike[str], limit: Limit, what: str) -> bytes:
    """A file's bytes, refused before reading when its size is over `limit` (devices and pipes: after limit+1 bytes)."""
    p = Path(path)
    with p.open("rb") as f:
        limit.check(f"{what} {p}", os.fstat(f.fileno()).st_size)
        data = f.read(limit.value() + 1)
    limit.check(f"{what} {p}", len(data))
    return data


def read_text_limited(path: str | os.PathLike[str], limit: Limit, what: str) -> str:
    """A UTF-8 text file within `limit` bytes (UnicodeDecodeError is the caller's to word)."""
    return read_bytes_limited(path, limit, what).decode("utf-8")


# A quoted string in JSON or a Python literal; an unclosed one runs to the end (so the scan stays linear).
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\Z)|\'(?:[^\'\\]|\\.)*(?:\'|\Z)', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}()]+")


def nesting_depth(text: str) -> int:
    """The deepest bracket nesting of JSON or a Python literal, brackets inside strings not counted (no recursion)."""
    brackets = _NOT_BRACKET.sub("", _QUOTED.sub("", text))
    steps = (1 if c in "[{(" else -1 for c in brackets)
    return max(itertools.accumulate(steps, lambda depth, step: max(depth + step, 0), initial=0))


def check_nesting(what: str, text: str) -> None:
    """Refuse JSON or literal text nested deeper than NESTING_DEPTH, before a recursive parser sees it."""
    NESTING_DEPTH.check(f"{what} nesting", nesting_depth(text))


def loads_json(text: str, what: str) -> Any:
    """json.loads after the nesting check; malformed JSON raises ValueError (json.JSONDecodeError or a number's)."""
    check_nesting(what, text)
    return json.loads(text)


def read_json_limited(path: str | os.PathLike[str], what: str, limit: Limit = JSON_BYTES) -> Any:
    """A JSON file's content: its size within `limit` before reading, its nesting checked before parsing
    (OSError, UnicodeDecodeError and malformed JSON's ValueError are the caller's to word; LimitError names the limit)."""
    return loads_json(read_text_limited(path, limit, what), f"{what} {path}")


def literal_eval_bounded(text: str, what: str) -> Any:
    """ast.literal_eval of a short metadata string; too long, deep or complex is a LimitError (a ValueError)."""
    METADATA_CHARS.check(what, len(text))
    check_nesting(what, text)
    try:
        return ast.literal_eval(text)
    except (RecursionError, MemoryError):  # chains of unary operators overflow the parser's stack
        raise LimitError(f"{what}: too complex to parse as a literal ({len(text)} characters)") from None


@dataclass(frozen=True)
class CellNetworkShape:
    """The numbers of a cell network that its memory follows (defaults: a DARTS CIFAR network)."""

    channels: int
    layers: int
    input_hw: tuple[int, int]
    nodes: int = 4
    multiplier: int = 4
    stem_multiplier: int = 3
    reductions: int = 2  # each doubles the channels and halves H and W
    stem_stride: int = 1
    num_classes: int = 10
    ops_per_edge: int = 1  # a search supernet runs every candidate op on every edge
    # Per layer, how many times H and W were halved (and the channels doubled) after the stem; None: `reductions`
    # evenly spaced (DARTS: at layers // 3 and 2 * layers // 3). Auto-DeepLab's path gives its levels.
    levels: tuple[int, ...] | None = None
    head_channels: int = 0  # a dense head at the stem's resolution (a segmentation decoder), 0: a classifier

    def layer_levels(self) -> tuple[int, ...]:
        """How many times H and W were halved at each layer."""
        if self.levels is not None:
            return tuple(self.levels)
        reduce_at = {(k + 1) * self.layers // (self.reductions + 1) for k in range(self.reductions)}
        return tuple(sum(r <= layer for r in reduce_at) for layer in range(self.layers))


# Tensors one edge op holds per C*H*W in a forward pass (sep_conv_5x5: relu, depthwise, pointwise, BN, twice).
_TENSORS_PER_OP = 8


def estimate_network_bytes(shape: CellNetworkShape) -> int:
    """float32 bytes of the parameters and of every activation of one image's forward pass (what training keeps):
    an estimate from the config's numbers, computed before anything is built (above a DARTS network's measured
    total, within a factor of two of an Auto-DeepLab network's, whose cells on its path take more parameters)."""
    c0, (h0, w0) = shape.channels, shape.input_hw
    h0, w0 = max(1, h0 // shape.stem_stride), max(1, w0 // shape.stem_stride)
    edges = 2 * shape.nodes * shape.ops_per_edge
    params = 3 * 9 * shape.stem_multiplier * c0
    activations = 2 * shape.stem_multiplier * c0 * h0 * w0
    c = c0
    for level in shape.layer_levels():
        c, h, w = c0 << level, max(1, h0 >> level), max(1, w0 >> level)
        params += edges * (2 * c * c + 50 * c) + 2 * shape.multiplier * c * c
        activations += (edges * _TENSORS_PER_OP + shape.nodes + 2 * shape.multiplier) * c * h * w
    params += shape.multiplier * c * shape.num_classes
    if shape.head_channels:  # ASPP on the last cell and a decoder: 3x3 convolutions of the head's width
        k = shape.head_channels
        params += 9 * k * (3 * k + 2 * shape.multiplier * c) + k * shape.num_classes
        activations += _TENSORS_PER_OP * k * h0 * w0 + shape.num_classes * shape.input_hw[0] * shape.input_hw[1]
    return 4 * (params + activations)


def check_network(what: str, shape: CellNetworkShape) -> None:
    """Channels, layers, input size and the memory estimate of a network, checked before it is built."""
    CHANNELS.check(f"{what} channels", shape.channels)
    LAYERS.check(f"{what} layers", shape.layers)
    GENOTYPE_NODES.check(f"{what} nodes per cell", shape.nodes)
    check_input_size(f"{what} input", *shape.input_hw)
    NETWORK_BYTES.check(f"{what} estimated memory (parameters + one image's activations)",
                        estimate_network_bytes(shape))
