"""The selection protocol's settings: the `selection:` block of a search config and each space's short training.

The DARTS paper (section 3.3) searches four times with different seeds, trains each derived cell briefly
from scratch and keeps the best on validation: one search does not reproduce. `nasdeploy search --seeds
0,1,2,3` does the same; the block says how briefly each genotype is trained (nasdeploy.search.selection).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from nasdeploy.errors import ConfigError
from nasdeploy.utils.limits import check_seed
from nasdeploy.utils.yamlconfig import to_dict

SECTION = "selection"  # the block's key in a search config file (removed before the search config is validated)
DEFAULT_HOLDOUT = 0.2  # the short training validates on this fraction of the search's training images
MAX_SEEDS = 64  # each seed is a whole search


@dataclass(frozen=True)
class SelectionOptions:
    """How many searches (seeds), how they run, and how each derived genotype is trained briefly."""

    seeds: tuple[int, ...] = ()  # one search per seed (--seeds wins)
    epochs: int = 3  # the short training's epochs
    parallel: int = 1  # searches (and short trainings) run side by side, each its own process
    # Overrides of the short training config, in the space's training config sections (e.g. for DARTS CNN
    # {model: {channels: 16, layers: 8}, data: {holdout: 0.1}}), merged over the space's default.
    train: Any = None

    def __post_init__(self) -> None:
        _check_seeds("selection.seeds", self.seeds)
        for key in ("epochs", "parallel"):
            if getattr(self, key) < 1:
                raise ConfigError(f"selection.{key} must be >= 1, got {getattr(self, key)}")
        if self.train is not None and not isinstance(self.train, dict):
            raise ConfigError(f"selection.train must be a mapping of training config sections, got {self.train!r}")


def parse_seeds(text: str) -> tuple[int, ...]:
    """'0,1,2,3' -> (0, 1, 2, 3); a one-line error for anything else."""
    parts = [p.strip() for p in text.split(",")]
    try:
        seeds = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers such as 0,1,2,3, got {text!r}") from None
    _check_seeds("--seeds", seeds)
    return seeds


def _check_seeds(what: str, seeds: tuple[int, ...]) -> None:
    if len(seeds) > MAX_SEEDS:
        raise ConfigError(f"{what}: at most {MAX_SEEDS} seeds (each is a whole search), got {len(seeds)}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{what} must not repeat a seed, got {list(seeds)}")
    for seed in seeds:
        check_seed(what, seed)


@dataclass(frozen=True)
class SelectionRules:
    """What the protocol needs to know about a space: where its configs keep the seed and threads, how its
    derived genotypes are trained briefly by default, and which metric of that training picks the winner."""

    seed_key: str  # dotted key of the search's seed
    search_threads_key: str
    train_threads_key: str
    metric: str  # the key of the training's done.json that is compared
    higher_is_better: bool
    short_training: Callable[[Any, int], dict[str, Any]]  # (validated search config, epochs) -> train config mapping


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `update` merged in, section by section."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def darts_cnn_short_training(search: Any, epochs: int) -> dict[str, Any]:
    """The default short training of a DARTS CNN genotype: the search's data with a fifth of its training images
    held out for validation, a network of the supernet's size (no auxiliary head, no drop path), the search's
    batch size, device and threads, and one training seed (0) for every candidate, so only the cell differs."""
    s = search.search
    return {
        "data": {**to_dict(search.data), "holdout": DEFAULT_HOLDOUT},
        "model": {"net": "cifar", "channels": search.model.channels, "layers": search.model.layers,
                  "auxiliary": False},
        "train": {"epochs": epochs, "batch_size": s.batch_size, "drop_path_prob": 0.0, "seed": 0, "device": s.device,
                  "threads": s.threads, "deterministic": s.deterministic},
    }


DARTS_CNN_RULES = SelectionRules(seed_key="search.seed", search_threads_key="search.threads",
                                 train_threads_key="train.threads", metric="top1", higher_is_better=True,
                                 short_training=darts_cnn_short_training)
