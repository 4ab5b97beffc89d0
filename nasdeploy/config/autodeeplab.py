"""Auto-DeepLab configs: the hierarchical search (supernet / data / search) and the segmentation training (net / data / train)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from nasdeploy.config.cost import CostOptions
from nasdeploy.data.segmentation import SegDataConfig
from nasdeploy.errors import ConfigError
from nasdeploy.genotypes import AUTODEEPLAB_PRIMITIVES
from nasdeploy.utils.checks import check_betas, check_bn_settings, check_fraction, check_non_negative, check_positive
from nasdeploy.utils.limits import CellNetworkShape, check_network, check_seed


@dataclass(frozen=True)
class AutoDeepLabSupernetConfig:
    """Sizes of the Auto-DeepLab supernet (paper: L=12, F=8, B=5)."""

    layers: int = 12
    filter_multiplier: int = 8
    blocks: int = 5
    num_classes: int = 19
    stem_channels: int = 64
    aspp_channels: int = 0  # 0: each level's node width B * F * s / 4 (the paper); > 0: this width at every level
    mixed_op: str | None = None  # reference | fused | auto (None: $NASDEPLOY_MIXED_OP, default auto)

    def __post_init__(self) -> None:
        for key in ("layers", "filter_multiplier", "blocks", "num_classes", "stem_channels"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"supernet.{key} must be a positive integer, got {value!r}")
        if self.aspp_channels < 0:
            raise ConfigError("supernet.aspp_channels must be >= 0 (0: each level's node width), "
                              f"got {self.aspp_channels}")


@dataclass(frozen=True)
class AutoDeepLabCostOptions(CostOptions):
    """search.cost of the Auto-DeepLab search: a MAC budget on the deployment segmentation network (cell and path).

    The cost table (spaces/autodeeplab_cost_table.py) describes the static network the genotype becomes:
    the supernet's layers and blocks, the dataset's classes and the widths and input size below (the train
    config's net section; the published Auto-DeepLab-S: F=20, 1024x2048). table: auto builds it once and
    caches it per spec (~/.cache/nasdeploy); a file is a run's cost_table.json.
    """

    TABLE_HINT: ClassVar[str] = " (auto: built from this section's network; a file: a search run's cost_table.json)"

    input_size: tuple[int, int] = (1024, 2048)  # (H, W) the cost is counted at
    filter_multiplier: int = 20
    aspp_channels: int = 256
    decoder_channels: int = 256
    low_level_channels: int = 48
    separable_heads: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("search.cost", filter_multiplier=self.filter_multiplier, aspp_channels=self.aspp_channels,
                       decoder_channels=self.decoder_channels, low_level_channels=self.low_level_channels)
        if len(self.input_size) != 2 or min(self.input_size) < 2:
            raise ConfigError(f"search.cost.input_size must be [H, W] with H, W >= 2, got {list(self.input_size)}")


@dataclass(frozen=True)
class AutoDeepLabSearchOptions:
    """Search protocol (paper: 40 epochs, batch 2, SGD 0.025 -> 0.001 cosine, wd 3e-4; Adam 3e-3, wd 1e-3 after epoch 20)."""

    epochs: int = 40
    arch_start_epoch: int = 20  # architecture updates begin once this many epochs are done
    batch_size: int = 2
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    arch_lr: float = 3e-3
    arch_betas: tuple[float, float] = (0.9, 0.999)
    arch_weight_decay: float = 1e-3
    grad_clip: float = 5.0
    steps_per_epoch: int = 0  # 0: one pass over half A
    seed: int = 0
    threads: int = 0  # 0: leave torch's default
    workers: int = 0
    device: str = "cpu"
    cost: Optional[AutoDeepLabCostOptions] = None  # a MAC budget on the deployment network (None: none)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError("search: epochs must be >= 1 and batch_size >= 2 (BatchNorm needs two samples)")
        if not 0 <= self.arch_start_epoch:
            raise ConfigError("search: arch_start_epoch must be >= 0")
        if not (self.lr > 0 and self.arch_lr > 0 and 0 <= self.lr_min <= self.lr):
            raise ConfigError(f"search: learning rates must be positive and lr_min in [0, lr], got lr={self.lr}, "
                              f"lr_min={self.lr_min}, arch_lr={self.arch_lr}")
        check_positive("search", grad_clip=self.grad_clip)
        check_fraction("search", momentum=self.momentum)
        check_non_negative("search", weight_decay=self.weight_decay, arch_weight_decay=self.arch_weight_decay,
                           steps_per_epoch=self.steps_per_epoch, threads=self.threads, workers=self.workers)
        check_betas("search", "arch_betas", self.arch_betas)
        check_seed("search.seed", self.seed)


@dataclass(frozen=True)
class AutoDeepLabSearchConfig:
    """Everything an Auto-DeepLab search run needs."""

    supernet: AutoDeepLabSupernetConfig = field(default_factory=AutoDeepLabSupernetConfig)
    data: SegDataConfig = field(default_factory=SegDataConfig)
    search: AutoDeepLabSearchOptions = field(default_factory=AutoDeepLabSearchOptions)

    # Keys that may change when a run is resumed (they do not change the result).
    RESUMABLE: ClassVar[tuple[str, ...]] = ("data.root", "search.device", "search.threads")

    def __post_init__(self) -> None:
        s, size = self.supernet, self.data.crop_size or self.data.image_size
        edges = sum(2 + i for i in range(s.blocks))
        # Counted as if every layer ran at stride 4: the four levels of a layer hold under twice the stride-4 level's
        # activations, and each level's cell is computed from up to three neighbours; every op on every edge.
        ops = -(-len(AUTODEEPLAB_PRIMITIVES) * edges * 3 // (2 * s.blocks))
        check_network("supernet", CellNetworkShape(s.filter_multiplier, s.layers, (size[0], size[1]), nodes=s.blocks,
                                                   multiplier=s.blocks, stem_stride=4, levels=(0,) * s.layers,
                                                   num_classes=s.num_classes, ops_per_edge=ops))


@dataclass(frozen=True)
class AutoDeepLabNetworkConfig:
    """Which network: a genotype (registry name or JSON path) and the segmentation net's sizes."""

    genotype: str = "AutoDeepLab"
    filter_multiplier: int = 20
    aspp_channels: int = 256
    decoder_channels: int = 256
    low_level_channels: int = 48
    separable_heads: bool = False
    dropout: float = 0.1
    bn_momentum: float = 0.1  # PyTorch momentum = 1 - TF decay (released model: decay 0.9997 -> 3e-4)
    bn_eps: float = 1e-5  # released model: 1e-3

    def __post_init__(self) -> None:
        check_bn_settings(self.bn_momentum, self.bn_eps)
        check_positive("net", filter_multiplier=self.filter_multiplier, aspp_channels=self.aspp_channels,
                       decoder_channels=self.decoder_channels, low_level_channels=self.low_level_channels)
        check_fraction("net", dropout=self.dropout)

    def net_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of build_network(..., 'segmentation', **kwargs) besides num_classes."""
        return {"filter_multiplier": self.filter_multiplier, "aspp_channels": self.aspp_channels,
                "decoder_channels": self.decoder_channels, "low_level_channels": self.low_level_channels,
                "separable_heads": self.separable_heads, "dropout": self.dropout,
                "bn_momentum": self.bn_momentum, "bn_eps": self.bn_eps}


@dataclass(frozen=True)
class AutoDeepLabTrainOptions:
    """Optimisation: SGD with momentum and DeepLab's poly schedule lr * (1 - it / max_it) ** power."""

    epochs: int = 100
    batch_size: int = 8
    lr: float = 0.05
    poly_power: float = 0.9
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 0.0  # 0: off
    drop_path_prob: float = 0.0  # ramped linearly over the iterations: drop_path_prob * it / max_it
    steps_per_epoch: int = 0  # 0: one pass over the training set
    seed: int = 0
    threads: int = 0
    workers: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError("train: epochs must be >= 1 and batch_size >= 2 (BatchNorm needs two samples)")
        check_positive("train", lr=self.lr, poly_power=self.poly_power)
        check_fraction("train", momentum=self.momentum)
        check_non_negative("train", weight_decay=self.weight_decay, grad_clip=self.grad_clip,
                           steps_per_epoch=self.steps_per_epoch, threads=self.threads, workers=self.workers)
        if isinstance(self.drop_path_prob, bool) or not 0 <= self.drop_path_prob < 1:
            raise ConfigError(f"train.drop_path_prob must be in [0, 1), got {self.drop_path_prob}")
        check_seed("train.seed", self.seed)


@dataclass(frozen=True)
class AutoDeepLabTrainConfig:
    """Everything a segmentation training run of an Auto-DeepLab genotype needs."""

    net: AutoDeepLabNetworkConfig = field(default_factory=AutoDeepLabNetworkConfig)
    data: SegDataConfig = field(default_factory=SegDataConfig)
    train: AutoDeepLabTrainOptions = field(default_factory=AutoDeepLabTrainOptions)

    # net.genotype names the genotype; the genotype itself is checked on resume (a file may move).
    RESUMABLE: ClassVar[tuple[str, ...]] = ("net.genotype", "data.root", "train.device", "train.threads")
