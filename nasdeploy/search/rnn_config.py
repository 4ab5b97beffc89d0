"""Configuration of the DARTS recurrent search (defaults: the published PTB search settings)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from nasdeploy.data.text import TextDataConfig
from nasdeploy.errors import ConfigError
from nasdeploy.utils.checks import Threads, check_betas, check_non_negative, check_positive, check_run_settings
from nasdeploy.utils.yamlconfig import from_dict, load_config


def _check_probability(where: str, **values: float) -> None:
    for name, value in values.items():
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{where}.{name} must be a probability in [0, 1), got {value}")


@dataclass(frozen=True)
class RNNSearchModelConfig:
    """The supernet: sizes, steps, dropout rates (output, hidden, x, input, embedding)."""

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
        if self.emsize != self.nhid:
            raise ConfigError(f"model: tied embedding and decoder need emsize == nhid, got {self.emsize} and {self.nhid}")
        if self.alpha_init not in ("normal", "zeros"):
            raise ConfigError(f"model.alpha_init must be 'normal' or 'zeros', got {self.alpha_init!r}")


@dataclass(frozen=True)
class RNNSearchSettings:
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
    threads: Threads = None  # torch CPU threads: a count, "auto" (the cores idle at the start) or None
    device: str = "auto"  # 'auto' | 'cpu' | 'cuda'
    progress: bool = True

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


@dataclass(frozen=True)
class RNNSearchConfig:
    """Data, supernet and loop settings of one recurrent search."""

    data: TextDataConfig = field(default_factory=TextDataConfig)
    model: RNNSearchModelConfig = field(default_factory=RNNSearchModelConfig)
    search: RNNSearchSettings = field(default_factory=RNNSearchSettings)


def rnn_search_config_from_dict(data: dict[str, Any]) -> RNNSearchConfig:
    """Validate a config mapping into an RNNSearchConfig."""
    return from_dict(RNNSearchConfig, data)


def load_rnn_search_config(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> RNNSearchConfig:
    """Load from YAML (a file with `search_run:` uses that section), apply dotted overrides, validate."""
    return load_config(RNNSearchConfig, path, overrides, section="search_run")
