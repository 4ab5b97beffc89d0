"""What `nasdeploy profile` asks of a space's profile adapter, as one typed value (every adapter takes the same)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

from nasdeploy.export.request import NetSizes
from nasdeploy.profile.protocol import LatencyConfig


@dataclass(frozen=True)
class ProfileRequest:
    """How to build and time the targets of one profile table.

    input_size: S or (C, H, W) of an image network; seq_len / threads: a language model's window and CPU
    threads; onnx_path: an exported model of the (one) target that onnxruntime times instead of a temporary export.
    """

    net: str | None = None
    sizes: NetSizes = field(default_factory=NetSizes)
    input_size: int | Sequence[int] | None = None
    latency: tuple[str, ...] = ()
    latency_config: LatencyConfig = field(default_factory=LatencyConfig)
    onnx_path: str | os.PathLike[str] | None = None
    seq_len: int | None = None
    threads: int | None = None
