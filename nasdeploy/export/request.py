"""What `nasdeploy export` asks of a space's export adapter, as one typed value (every adapter takes the same)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from nasdeploy.data.factory import DataConfig
from nasdeploy.errors import ConfigError
from nasdeploy.export.formats import check_formats
from nasdeploy.export.options import ExportOptions
from nasdeploy.export.samples import SampleSizes
from nasdeploy.export.target import DeployTarget
from nasdeploy.genotypes import Genotype


@dataclass(frozen=True)
class NetSizes:
    """Network sizes asked for (None: the checkpoint's, else the family's default)."""

    channels: int | None = None  # initial channels C; Auto-DeepLab's F; a language model's nhid
    layers: int | None = None
    num_classes: int | None = None  # classes; a language model's vocabulary


@dataclass(frozen=True)
class ExportRequest:
    """An export of a target: a genotype (name, file, object), a checkpoint naming its genotype, or a DeployTarget.

    `data` (a dataset config), or `dataset` / `data_dir`, give real images for parity and, with options.int8,
    the calibration and validation samples of `samples` images.
    """

    target: str | os.PathLike[str] | Genotype | DeployTarget
    checkpoint: str | os.PathLike[str] | None = None
    net: str | None = None
    formats: tuple[str, ...] = ("onnx",)
    out_dir: str | os.PathLike[str] | None = None
    sizes: NetSizes = field(default_factory=NetSizes)
    options: ExportOptions = field(default_factory=ExportOptions)
    data: DataConfig | None = None
    dataset: str | None = None
    data_dir: str | os.PathLike[str] | None = None
    samples: SampleSizes = field(default_factory=SampleSizes)

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", check_formats(self.formats))

    @property
    def wants_data(self) -> bool:
        """Whether the request names a dataset in any of its three ways."""
        return any(v is not None for v in (self.data, self.dataset, self.data_dir))

    def refuse_data(self, why: str) -> None:
        """ConfigError (`why`) when the request names a dataset or INT8 methods."""
        if self.wants_data or self.options.int8.methods:
            raise ConfigError(why)
