"""DARTS CNN configs: the search (data / model / search) and the training of a static network (genotype / data / model / train)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar, Optional

from nasdeploy.config.cost import CostOptions
from nasdeploy.data.factory import DataConfig
from nasdeploy.errors import ConfigError
from nasdeploy.genotypes import CNN_PRIMITIVES
from nasdeploy.nets.factory import get_net_config
from nasdeploy.utils.checks import Threads, check_betas, check_fraction, check_non_negative, check_positive, check_threads
from nasdeploy.utils.limits import CellNetworkShape, check_network, check_seed

# The supernet's reduction cells sit at layers // 3 and 2 * layers // 3; below 3 layers no normal cell is left, so
# the normal cell's alphas get no gradient (autograd failed mid-search).
MIN_SEARCH_LAYERS = 3


@dataclass(frozen=True)
class DartsCnnSupernetConfig:
    """Supernet sizes (DARTS CIFAR: C=16, 8 layers, 4 steps, multiplier 4, stem multiplier 3)."""

    channels: int = 16
    layers: int = 8
    steps: int = 4
    multiplier: int = 4
    stem_multiplier: int = 3
    alpha_init: str = "normal"  # normal: alpha_init_scale * N(0, 1) (reference) | zeros (paper)
    alpha_init_scale: float = 1e-3
    mixed_op: Optional[str] = None  # reference | fused | auto; None: $NASDEPLOY_MIXED_OP, else auto
    partial_channels: int = 1  # PC-DARTS K: ops on channels/K, channel shuffle, edge-normalisation betas; 1 = plain DARTS
    # Conv candidates recompute their intermediates in backward (fused mixed op): less memory, a little time.
    # None: on for PC-DARTS (partial_channels > 1) on the CPU, off otherwise.
    recompute_op_bodies: Optional[bool] = None

    def __post_init__(self) -> None:
        if self.alpha_init not in ("normal", "zeros"):
            raise ConfigError(f"model.alpha_init must be 'normal' or 'zeros', got {self.alpha_init!r}")
        check_positive("model", alpha_init_scale=self.alpha_init_scale)
        if self.multiplier > self.steps:
            raise ConfigError(f"model.multiplier ({self.multiplier}) cannot exceed model.steps ({self.steps})")
        if self.channels < 2 or self.channels % 2:
            raise ConfigError(f"model.channels must be an even number >= 2, got {self.channels}")
        for key in ("layers", "steps", "multiplier", "stem_multiplier"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        if self.layers < MIN_SEARCH_LAYERS:
            raise ConfigError(f"model.layers must be >= {MIN_SEARCH_LAYERS}, got {self.layers}: the reduction cells sit at "
                              "layers // 3 and 2 * layers // 3, and the search needs a normal cell besides them")
        if self.recompute_op_bodies is not None and not isinstance(self.recompute_op_bodies, bool):
            raise ConfigError("model.recompute_op_bodies must be true, false or null (on for PC-DARTS on the CPU), "
                              f"got {self.recompute_op_bodies!r}")
        k = self.partial_channels
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"model.partial_channels must be an integer >= 1 (1 = plain DARTS), got {k!r}")
        if self.channels % k:  # cells have channels x 1, 2 or 4: this makes every cell's width divisible by K
            raise ConfigError(f"model.channels ({self.channels}) must be divisible by model.partial_channels ({k})")


@dataclass(frozen=True)
class DartsCnnCostOptions(CostOptions):
    """search.cost of the DARTS CNN search: a MAC or latency budget read from a cost table (search/cost.py)."""

    METRICS: ClassVar[tuple[str, ...]] = ("macs", "latency")
    TABLE_HINT: ClassVar[str] = (" (auto under `nasdeploy pipeline`; build a file with: "
                                 "nasdeploy profile --cost-table darts_cnn --json table.json)")

    backend: str = "ort-cpu-1t"  # the latency backend `table: auto` measures (nasdeploy pipeline)


@dataclass(frozen=True)
class CollapseGuards:
    """search.collapse: guards against DARTS's collapse to skip connections and pooling; each is off by default.

    darts_minus: DARTS- (Chu et al. 2020, "DARTS-: Robustly Stepping out of Performance Collapse Without
      Indicators"): an auxiliary skip connection on every edge, added outside the softmax (not a candidate
      op), with a weight decaying linearly from aux_skip_weight at the first epoch towards 0 at the end.
    darts_plus: DARTS+ (Liang et al. 2019, "DARTS+: Improved Differentiable Architecture Search with Early
      Stopping"): the search stops after the first epoch whose derived normal cell holds stop_skips or more
      skip connections; that epoch's genotype is published.
    p_darts: P-DARTS (Chen et al. 2019, "Progressive Differentiable Architecture Search"): the derivation keeps
      the best genotype whose normal cell holds at most max_skips skip connections (with a budget, both in
      one exact derivation).
    """

    darts_minus: bool = False
    aux_skip_weight: float = 1.0  # DARTS-'s beta_0 (the paper's 1.0)
    darts_plus: bool = False
    stop_skips: int = 2  # DARTS+'s criterion: 2 skip connections in the normal cell
    p_darts: bool = False
    max_skips: int = 2  # P-DARTS's M

    def __post_init__(self) -> None:
        check_positive("search.collapse", aux_skip_weight=self.aux_skip_weight, stop_skips=self.stop_skips)
        check_non_negative("search.collapse", max_skips=self.max_skips)


@dataclass(frozen=True)
class DartsCnnSearchOptions:
    """The search schedule and optimisers (DARTS CIFAR-10 defaults)."""

    epochs: int = 50
    batch_size: int = 64  # global batch (split over DDP ranks), per half
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    train_portion: float = 0.5  # first part trains w, the rest trains alpha
    order: str = "first"  # first | second (unrolled)
    arch_lr: float = 3e-4
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    eval_images: Optional[int] = None  # evaluate on the first N images of the alpha half (None: all)
    seed: int = 2
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = False  # torch.use_deterministic_algorithms (bitwise resume on CPU)
    threads: Threads = None  # torch CPU threads: a count, "auto" (the usable physical cores) or None (default)
    cost: Optional[DartsCnnCostOptions] = None  # a MAC / latency budget on the architecture (None: plain DARTS)
    collapse: CollapseGuards = field(default_factory=CollapseGuards)  # DARTS- / DARTS+ / P-DARTS guards

    def __post_init__(self) -> None:
        if self.order not in ("first", "second"):
            raise ConfigError(f"search.order must be 'first' or 'second', got {self.order!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("search.epochs and search.batch_size must be >= 1")
        if not (self.lr > 0 and 0 <= self.lr_min <= self.lr):
            raise ConfigError(f"search.lr must be positive and lr_min in [0, lr], got lr={self.lr}, lr_min={self.lr_min}")
        check_positive("search", arch_lr=self.arch_lr, grad_clip=self.grad_clip)
        check_fraction("search", momentum=self.momentum)
        check_non_negative("search", weight_decay=self.weight_decay, arch_weight_decay=self.arch_weight_decay)
        check_betas("search", "arch_betas", self.arch_betas)
        if not 0.0 < self.train_portion < 1.0:
            raise ConfigError(f"search.train_portion must be strictly between 0 and 1, got {self.train_portion}")
        check_threads("search", self.threads)
        if self.eval_images is not None and self.eval_images < 1:
            raise ConfigError(f"search.eval_images must be positive, got {self.eval_images}")
        check_seed("search.seed", self.seed)


@dataclass(frozen=True)
class DartsCnnSearchConfig:
    """A whole DARTS CNN search run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: DartsCnnSupernetConfig = field(default_factory=DartsCnnSupernetConfig)
    search: DartsCnnSearchOptions = field(default_factory=DartsCnnSearchOptions)

    # Keys that may change when a run is resumed (they do not change the result).
    RESUMABLE: ClassVar[tuple[str, ...]] = ("data.data_dir", "data.num_workers", "search.device", "search.threads")

    def __post_init__(self) -> None:
        m = self.model
        # Every candidate op runs on every edge (node i has 2 + i edges), on channels / K with PC-DARTS.
        edges = sum(2 + i for i in range(m.steps))
        ops = max(1, -(-len(CNN_PRIMITIVES) * edges // (2 * m.steps * m.partial_channels)))
        check_network("model (the search supernet)", CellNetworkShape(
            m.channels, m.layers, (self.data.image_size, self.data.image_size), nodes=m.steps, multiplier=m.multiplier,
            stem_multiplier=m.stem_multiplier, ops_per_edge=ops))
        if self.search.collapse.darts_minus and self.model.partial_channels > 1:
            raise ConfigError("search.collapse.darts_minus (DARTS-'s auxiliary skip) runs on plain DARTS supernets only; "
                              "set model.partial_channels: 1 or turn darts_minus off")


@dataclass(frozen=True)
class DartsCnnNetworkConfig:
    """Which static network to build from the genotype (DARTS CIFAR: C=36, 20 layers, auxiliary head)."""

    net: str = "cifar"  # cifar | imagenet (any registered network family)
    channels: int = 36
    layers: int = 20
    auxiliary: bool = True
    num_classes: Optional[int] = None  # default: the dataset's class count

    def __post_init__(self) -> None:
        if self.channels < 2 or self.channels % 2:
            raise ConfigError(f"model.channels must be an even number >= 2, got {self.channels}")
        if self.layers < 1:
            raise ConfigError(f"model.layers must be >= 1, got {self.layers}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ConfigError(f"model.num_classes must be >= 1, got {self.num_classes}")


@dataclass(frozen=True)
class DartsCnnTrainOptions:
    """Optimisation recipe (DARTS CIFAR defaults: 600 epochs, batch 96, SGD 0.025 cosine, aux 0.4, drop-path 0.2)."""

    epochs: int = 600
    batch_size: int = 96  # global batch (split over DDP ranks)
    lr: float = 0.025
    lr_schedule: str = "cosine"  # cosine (to lr_min) | exponential (x lr_gamma per epoch)
    lr_min: float = 0.0
    lr_gamma: float = 0.97
    momentum: float = 0.9
    weight_decay: float = 3e-4
    auxiliary_weight: float = 0.4
    drop_path_prob: float = 0.2  # ramped linearly: drop_path_prob * epoch / epochs
    grad_clip: float = 5.0
    label_smoothing: float = 0.0
    eval_every: int = 1  # evaluate every N epochs (and always after the last)
    seed: int = 0
    device: str = "auto"
    deterministic: bool = False
    threads: Threads = None  # torch CPU threads: a count, "auto" (the usable physical cores) or None (default)
    # NHWC activations and weights. None: on CPU only, where depthwise/dilated conv backward runs 2-4x
    # faster in channels_last (measured on the demo network: 1.0 s -> 0.58 s a step, one thread).
    channels_last: Optional[bool] = None

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("cosine", "exponential"):
            raise ConfigError(f"train.lr_schedule must be 'cosine' or 'exponential', got {self.lr_schedule!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ConfigError("train.epochs, train.batch_size and train.eval_every must be >= 1")
        if not (self.lr > 0 and 0 <= self.lr_min <= self.lr):
            raise ConfigError(f"train.lr must be positive and lr_min in [0, lr], got lr={self.lr}, lr_min={self.lr_min}")
        if not 0 < self.lr_gamma <= 1:
            raise ConfigError(f"train.lr_gamma must be in (0, 1], got {self.lr_gamma}")
        if not 0 <= self.drop_path_prob < 1:
            raise ConfigError(f"train.drop_path_prob must be in [0, 1), got {self.drop_path_prob}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        check_non_negative("train", auxiliary_weight=self.auxiliary_weight, weight_decay=self.weight_decay)
        check_positive("train", grad_clip=self.grad_clip)
        check_fraction("train", momentum=self.momentum)
        check_threads("train", self.threads)
        check_seed("train.seed", self.seed)


@dataclass(frozen=True)
class DartsCnnTrainConfig:
    """A whole training run of a static DARTS CNN network."""

    genotype: Optional[str] = None  # registry name or genotype file; the CLI's --genotype wins
    data: DataConfig = field(default_factory=DataConfig)
    model: DartsCnnNetworkConfig = field(default_factory=DartsCnnNetworkConfig)
    train: DartsCnnTrainOptions = field(default_factory=DartsCnnTrainOptions)

    RESUMABLE: ClassVar[tuple[str, ...]] = ("data.data_dir", "data.num_workers", "train.device", "train.threads",
                                            "train.channels_last", "genotype")

    def __post_init__(self) -> None:
        net = get_net_config(self.model.net)
        if net.genotype_kind != "cnn_cell":
            raise ConfigError(f"model.net must be a DARTS CNN network family, got '{self.model.net}' "
                              f"(for {net.genotype_kind} genotypes)")
        size = self.data.image_size
        if size < net.min_input_size:
            raise ConfigError(f"data.image_size {size} is below the {net.name} network's total stride "
                              f"{net.min_input_size} (its last cells would see less than one pixel); use at least "
                              f"{net.min_input_size}")
        sized = replace(net, channels=self.model.channels, layers=self.model.layers,
                        num_classes=self.model.num_classes or net.num_classes)
        check_network("model", sized.shape((size, size)))
