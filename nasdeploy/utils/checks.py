"""Value checks shared by the config dataclasses: one-line errors that name `section.field`."""

from __future__ import annotations

from nasdeploy.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def check_positive(section: str, **values: float) -> None:
    """Every value > 0."""
    for name, value in values.items():
        if value <= 0:
            raise ConfigError(f"{section}.{name} must be positive, got {value}")


def check_run_settings(section: str, max_batches_per_epoch: int | None, threads: int | None, device: str) -> None:
    """The loop settings every run section has: an optional batch cap, CPU threads and the device."""
    if max_batches_per_epoch is not None and max_batches_per_epoch < 1:
        raise ConfigError(f"{section}.max_batches_per_epoch must be positive, got {max_batches_per_epoch}")
    if threads is not None and threads < 1:
        raise ConfigError(f"{section}.threads must be positive, got {threads}")
    if device not in DEVICES:
        raise ConfigError(f"{section}.device must be 'auto', 'cpu' or 'cuda', got {device!r}")
