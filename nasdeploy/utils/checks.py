"""Value checks shared by the config dataclasses: one-line errors that name `section.field`."""

from __future__ import annotations

from typing import Literal, Union

from nasdeploy.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
# A run's CPU threads: a count, "auto" (the physical cores the process may use, whatever their load; see
# utils/runtime.py) or None (torch's default).
Threads = Union[int, Literal["auto"], None]


def check_threads(section: str, threads: Threads) -> None:
    """A positive thread count, 'auto' or None."""
    if threads is None or threads == "auto":
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"{section}.threads must be a positive integer, 'auto' or null, got {threads!r}")


def check_positive(section: str, **values: float) -> None:
    """Every value > 0 (NaN fails)."""
    for name, value in values.items():
        if not value > 0:
            raise ConfigError(f"{section}.{name} must be positive, got {value}")


def check_non_negative(section: str, **values: float) -> None:
    """Every value >= 0 (NaN fails)."""
    for name, value in values.items():
        if not value >= 0:
            raise ConfigError(f"{section}.{name} must be >= 0, got {value}")


def check_fraction(section: str, *, low_open: bool = False, high_open: bool = True, **values: float) -> None:
    """Every value in [0, 1) by default; (0, 1) with low_open, [0, 1] without high_open (NaN fails)."""
    for name, value in values.items():
        above = value > 0 if low_open else value >= 0
        below = value < 1 if high_open else value <= 1
        if not (above and below):
            interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
            raise ConfigError(f"{section}.{name} must be in {interval}, got {value}")


def check_betas(section: str, name: str, betas: tuple[float, ...]) -> None:
    """Adam's (beta1, beta2): two values, each in [0, 1)."""
    if len(betas) != 2:
        raise ConfigError(f"{section}.{name} must hold two values (beta1, beta2), got {list(betas)}")
    for k, beta in enumerate(betas):
        if not 0 <= beta < 1:
            raise ConfigError(f"{section}.{name} must hold two values in [0, 1), got {list(betas)} (value {k + 1})")


def check_run_settings(section: str, max_batches_per_epoch: int | None, threads: Threads, device: str) -> None:
    """The loop settings every run section has: an optional batch cap, CPU threads and the device."""
    if max_batches_per_epoch is not None and max_batches_per_epoch < 1:
        raise ConfigError(f"{section}.max_batches_per_epoch must be positive, got {max_batches_per_epoch}")
    check_threads(section, threads)
    if device not in DEVICES:
        raise ConfigError(f"{section}.device must be 'auto', 'cpu' or 'cuda', got {device!r}")


def check_bn_settings(momentum: float, eps: float) -> None:
    """BatchNorm momentum must be in (0, 1] (PyTorch's: 1 - TensorFlow's decay) and epsilon positive."""
    for key, value in (("bn_momentum", momentum), ("bn_eps", eps)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
    if not 0.0 < momentum <= 1.0:
        raise ConfigError(f"bn_momentum must be in (0, 1] (PyTorch's momentum = 1 - TF decay), got {momentum}")
    if not eps > 0.0:
        raise ConfigError(f"bn_eps must be positive, got {eps}")
