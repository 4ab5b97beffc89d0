"""DARTS recurrent configs: the cell search and the language-model training (defaults: the published PTB settings)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Mapping

from nasdeploy.data.text import TextDataConfig
from nasdeploy.errors import ConfigError
from nasdeploy.utils.checks import Threads, check_betas, check_non_negative, check_positive, check_run_settings
from nasdeploy.utils.limits import CHANNELS, GENOTYPE_NODES, NETWORK_BYTES, check_seed


def _check_probability(where: str, **values: float) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ConfigError(f"{where}.{name} must be a probability in [0, 1), got {value!r}")


def _check_tied(emsize: int, nhid: int) -> None:
    if emsize != nhid:
        raise ConfigError(f"model: tied embedding and decoder need emsize == nhid, got {emsize} and {nhid}")


def _check_sizes(nhid: int, steps: int, ntokens: int = 0, seq_len: int = 1) -> None:
    """The width and nodes within the limits, and (given a vocabulary) the language model's memory estimate:
    float32 parameters (tied embedding, the cell's projections) and one window's activations."""
    CHANNELS.check("model.nhid", nhid)
    GENOTYPE_NODES.check("model steps (nodes of the cell)", steps)
    params = ntokens * (nhid + 1) + 2 * nhid * 2 * nhid + steps * nhid * 2 * nhid
    activations = seq_len * (ntokens + 4 * steps * nhid)
    NETWORK_BYTES.check("the language model's estimated memory (parameters + one window's activations)",
                        4 * (params + activations))


@dataclass(frozen=True)
class DartsRnnSupernetConfig:
    """The search supernet: sizes, steps, dropout rates (output, hidden, x, input, embedding)."""

    emsize: int = 300
    nhid: int = 300
    steps: int = 8
    dropout: float = 0.75
    dropouth: float = 0.25
    dropoutx: float = 0.75
    dropouti: float = 0.2
    dropoute: float = 0.0
    alpha_init: str = "normal"  # 1e-3 * N(0, 1) as the reference; 'zeros' as the paper says
    bn_running_stats: bool = False  # True: frozen running statistics in eval mode (reference; can diverge)

    def __post_init__(self) -> None:
        check_positive("model", emsize=self.emsize, nhid=self.nhid, steps=self.steps)
        _check_probability("model", dropout=self.dropout, dropouth=self.dropouth, dropoutx=self.dropoutx,
                           dropouti=self.dropouti, dropoute=self.dropoute)
        _check_tied(self.emsize, self.nhid)
        _check_sizes(self.nhid, self.steps)
        if self.alpha_init not in ("normal", "zeros"):
            raise ConfigError(f"model.alpha_init must be 'normal' or 'zeros', got {self.alpha_init!r}")


@dataclass(frozen=True)
class DartsRnnSearchOptions:
    """Loop settings: SGD on the weights (train split), Adam on the alphas (validation split)."""

    epochs: int = 50
    batch_size: int = 256
    eval_batch_size: int | None = None  # None: batch_size (the supernet normalises with batch statistics)
    bptt: int = 35
    max_seq_len_delta: int = 20
    lr: float = 20.0
    clip: float = 0.25
    weight_decay: float = 5e-7
    alpha_ar: float = 0.0  # activation regularisation
    beta_tar: float = 1e-3  # temporal activation regularisation
    order: str = "first"  # 'first' | 'second' (unrolled)
    arch_lr: float = 3e-3
    arch_betas: tuple[float, float] = (0.9, 0.999)
    arch_weight_decay: float = 1e-3
    max_batches_per_epoch: int | None = None  # cap for demos and smoke tests
    seed: int = 3
    threads: Threads = None  # torch CPU threads: a count, "auto" (the usable physical cores) or None
    device: str = "auto"  # 'auto' | 'cpu' | 'cuda'

    def __post_init__(self) -> None:
        check_positive("search", epochs=self.epochs, batch_size=self.batch_size, bptt=self.bptt, lr=self.lr,
                       clip=self.clip, arch_lr=self.arch_lr)
        check_non_negative("search", weight_decay=self.weight_decay, alpha_ar=self.alpha_ar, beta_tar=self.beta_tar,
                           arch_weight_decay=self.arch_weight_decay)
        check_betas("search", "arch_betas", self.arch_betas)
        if self.order not in ("first", "second"):
            raise ConfigError(f"search.order must be 'first' or 'second', got {self.order!r}")
        if self.batch_size < 2 or (self.eval_batch_size is not None and self.eval_batch_size < 2):
            raise ConfigError("search.batch_size and search.eval_batch_size must be >= 2 (BatchNorm over the batch)")
        check_run_settings("search", self.max_batches_per_epoch, self.threads, self.device)
        check_seed("search.seed", self.seed)


@dataclass(frozen=True)
class DartsRnnSearchConfig:
    """Data, supernet and loop settings of one recurrent cell search."""

    data: TextDataConfig = field(default_factory=TextDataConfig)
    model: DartsRnnSupernetConfig = field(default_factory=DartsRnnSupernetConfig)
    search: DartsRnnSearchOptions = field(default_factory=DartsRnnSearchOptions)

    # Keys that may change when a run is resumed (more epochs extend the run: the schedule does not depend on them).
    RESUMABLE: ClassVar[tuple[str, ...]] = ("data.data_dir", "search.epochs", "search.device", "search.threads")


@dataclass(frozen=True)
class DartsRnnNetworkConfig:
    """Sizes and dropout rates of the evaluation language model (defaults: the published PTB model)."""

    ntokens: int = 10000  # set from the corpus by the training loop
    emsize: int = 850
    nhid: int = 850
    dropout: float = 0.75  # output of the cell
    dropouth: float = 0.25  # hidden state fed to every projection
    dropoutx: float = 0.75  # input x of the cell
    dropouti: float = 0.2  # embedding output
    dropoute: float = 0.1  # whole words of the embedding matrix
    seq_len: int = 35  # default sequence length for export and profiling (the bptt)

    def __post_init__(self) -> None:
        for name in ("ntokens", "emsize", "nhid", "seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")
        _check_probability("model", dropout=self.dropout, dropouth=self.dropouth, dropoutx=self.dropoutx,
                           dropouti=self.dropouti, dropoute=self.dropoute)
        _check_tied(self.emsize, self.nhid)
        _check_sizes(self.nhid, 8, self.ntokens, self.seq_len)  # the DARTS recurrent cells have 8 nodes

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (checkpoint meta)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DartsRnnNetworkConfig":
        """Build from a dict, rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model setting '{unknown[0]}' (known: {', '.join(sorted(known))})")
        return cls(**dict(data))


@dataclass(frozen=True)
class DartsRnnTrainOptions:
    """SGD with the learning rate scaled per window, switching to ASGD when validation stops improving."""

    epochs: int = 8000  # the reference sets 8000 and stops the run by wall time
    batch_size: int = 64
    eval_batch_size: int = 10
    test_batch_size: int = 1
    bptt: int = 35
    max_seq_len_delta: int = 20
    lr: float = 20.0
    clip: float = 0.25
    weight_decay: float = 8e-7
    nonmono: int = 5  # switch to ASGD when validation is worse than the best of all but the last nonmono epochs
    alpha_ar: float = 0.0
    beta_tar: float = 1e-3
    max_batches_per_epoch: int | None = None
    seed: int = 1267
    threads: Threads = None  # torch CPU threads: a count, "auto" (the usable physical cores) or None
    device: str = "auto"

    def __post_init__(self) -> None:
        check_positive("train", epochs=self.epochs, batch_size=self.batch_size, eval_batch_size=self.eval_batch_size,
                       test_batch_size=self.test_batch_size, bptt=self.bptt, lr=self.lr, clip=self.clip)
        if self.nonmono < 1:
            raise ConfigError(f"train.nonmono must be >= 1, got {self.nonmono}")
        check_non_negative("train", weight_decay=self.weight_decay, alpha_ar=self.alpha_ar, beta_tar=self.beta_tar)
        check_run_settings("train", self.max_batches_per_epoch, self.threads, self.device)
        check_seed("train.seed", self.seed)


@dataclass(frozen=True)
class DartsRnnTrainConfig:
    """Data, evaluation model (model.ntokens is set from the corpus) and loop settings of one LM training run."""

    data: TextDataConfig = field(default_factory=TextDataConfig)
    model: DartsRnnNetworkConfig = field(default_factory=DartsRnnNetworkConfig)
    train: DartsRnnTrainOptions = field(default_factory=DartsRnnTrainOptions)

    RESUMABLE: ClassVar[tuple[str, ...]] = ("data.data_dir", "train.epochs", "train.device", "train.threads")
