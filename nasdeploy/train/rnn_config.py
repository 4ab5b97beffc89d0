"""Configuration of recurrent language-model training (defaults: the published PTB evaluation run)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from nasdeploy.data.text import TextDataConfig
from nasdeploy.errors import ConfigError
from nasdeploy.utils.checks import Threads, check_non_negative, check_positive, check_run_settings
from nasdeploy.nets.rnn import RNNLMConfig
from nasdeploy.utils.yamlconfig import from_dict, load_config


@dataclass(frozen=True)
class RNNTrainSettings:
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
    threads: Threads = None  # torch CPU threads: a count, "auto" (the cores idle at the start) or None
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        check_positive("train", epochs=self.epochs, batch_size=self.batch_size, eval_batch_size=self.eval_batch_size,
                       test_batch_size=self.test_batch_size, bptt=self.bptt, lr=self.lr, clip=self.clip)
        if self.nonmono < 1:
            raise ConfigError(f"train.nonmono must be >= 1, got {self.nonmono}")
        check_non_negative("train", weight_decay=self.weight_decay, alpha_ar=self.alpha_ar, beta_tar=self.beta_tar)
        check_run_settings("train", self.max_batches_per_epoch, self.threads, self.device)


@dataclass(frozen=True)
class RNNTrainConfig:
    """Data, evaluation model (sizes, dropouts; model.ntokens is set from the corpus) and loop settings."""

    data: TextDataConfig = field(default_factory=TextDataConfig)
    model: RNNLMConfig = field(default_factory=RNNLMConfig)
    train: RNNTrainSettings = field(default_factory=RNNTrainSettings)


def rnn_train_config_from_dict(data: dict[str, Any]) -> RNNTrainConfig:
    """Validate a config mapping into an RNNTrainConfig."""
    return from_dict(RNNTrainConfig, data)


def load_rnn_train_config(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> RNNTrainConfig:
    """Load from YAML (a file with `train_run:` uses that section), apply dotted overrides, validate."""
    return load_config(RNNTrainConfig, path, overrides, section="train_run")
