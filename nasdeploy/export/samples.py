"""Real images for an export, sampled once: parity batches, validation images (accuracy) and calibration (INT8).

A caller that runs several export steps (the pipeline: export, executorch, quantize) samples them once with
prepare_export_data and hands the same ExportData to each; every sample is seeded, so it is also the same
sample when taken again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
from torch import nn

from nasdeploy.data.factory import DataConfig, DatasetInfo, build_dataset
from nasdeploy.errors import ConfigError

Batch = tuple[np.ndarray, np.ndarray]  # (images float32 [N, C, H, W], labels int64 [N])
PARITY_BATCH = 8  # images per parity batch (validation and calibration batches hold 32)


def dataset_config(
    dataset: str,
    data_dir: str | os.PathLike[str] | None,
    image_size: int,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> DataConfig:
    """A DataConfig for evaluating / calibrating an exported net (eval transform at the export input size)."""
    augment = "cifar" if image_size <= 64 and dataset != "imagefolder" else "imagenet"
    if dataset in ("cifar10", "cifar100", "imagefolder") and data_dir is None:
        raise ConfigError(f"dataset '{dataset}' needs a data directory (--data-dir)")
    return DataConfig(
        dataset=dataset, data_dir=str(data_dir) if data_dir is not None else None, augment=augment,
        image_size=image_size, mean=tuple(mean) if mean is not None else None, std=tuple(std) if std is not None else None,
    )


def sample_batches(data_cfg: DataConfig, split: str, count: int, *, seed: int = 0, batch_size: int = 32) -> list[Batch]:
    """`count` images (a seeded random sample, not the first N: folders are sorted by class) of `split`."""
    if count < 1:
        raise ConfigError(f"need a positive number of {split} images, got {count}")
    dataset, _ = build_dataset(data_cfg, split, augment=False)
    n = len(dataset)
    if n == 0:
        raise ConfigError(f"the {split} split of {data_cfg.dataset} is empty")
    idx = np.random.default_rng(seed).permutation(n)[: min(count, n)]
    batches: list[Batch] = []
    for start in range(0, len(idx), batch_size):
        items = [dataset[int(i)] for i in idx[start:start + batch_size]]
        x = torch.stack([img for img, _ in items]).numpy().astype(np.float32)
        y = np.asarray([int(label) for _, label in items], dtype=np.int64)
        batches.append((x, y))
    return batches


@dataclass(frozen=True)
class SampleSizes:
    """How many images each sample takes: parity (validation split), validation and calibration (INT8 only)."""

    parity: int = 64
    validation: int = 500
    calibration: int = 128

    def __post_init__(self) -> None:
        if min(self.parity, self.validation, self.calibration) < 1:
            raise ConfigError("calibration/validation/parity image counts must be >= 1")


@dataclass(frozen=True)
class ImageSample:
    """Labelled batches and the line that says what they are (count, dataset, seed)."""

    batches: tuple[Batch, ...]
    label: str

    @property
    def images(self) -> list[np.ndarray]:
        """The image batches without their labels."""
        return [x for x, _ in self.batches]


@dataclass(frozen=True)
class ExportData:
    """The samples of one dataset an export uses; validation and calibration only where INT8 was asked for."""

    config: DataConfig
    info: DatasetInfo
    seed: int
    parity: ImageSample
    validation: ImageSample | None = None
    calibration: ImageSample | None = None

    def check_fits(self, model: nn.Module, height: int) -> None:
        """ConfigError unless `model` is a classifier with the dataset's classes, exported at its image size."""
        check_data_fits(self.config, self.info, model, height)


def is_classifier(model: nn.Module) -> bool:
    """Whether `model` is a classifier (its default_cfg names a positive number of classes)."""
    cfg = getattr(model, "default_cfg", None)
    return cfg is not None and getattr(cfg, "num_classes", 0) > 0


def check_data_fits(config: DataConfig, info: DatasetInfo | None, model: nn.Module, height: int) -> DatasetInfo:
    """The dataset's info once `model` is known to fit it (classifier, same classes, same image size)."""
    if not is_classifier(model):
        raise ConfigError("validation data for the export is supported for classifiers only (segmentation: not yet)")
    if info is None:
        _, info = build_dataset(config, "test", augment=False)
    classes = model.default_cfg.num_classes
    if info.num_classes != classes:
        raise ConfigError(f"dataset '{info.name}' has {info.num_classes} classes but the network outputs {classes}")
    if config.image_size != height:
        raise ConfigError(f"the dataset config's image_size {config.image_size} differs from the export input size {height}")
    return info


def prepare_export_data(config: DataConfig, model: nn.Module, height: int, *, seed: int = 0,
                        sizes: SampleSizes = SampleSizes(), int8: bool = False) -> ExportData:
    """Check that `model` fits the dataset, then sample parity images (and, for INT8, validation and calibration)."""
    info = check_data_fits(config, None, model, height)
    where = f" in {config.data_dir}" if config.data_dir else ""
    parity = sample_batches(config, "test", sizes.parity, seed=seed, batch_size=PARITY_BATCH)
    data = ExportData(config, info, seed,
                      ImageSample(tuple(parity), f"{_count(parity)} validation images of {info.name}{where} (seed {seed})"))
    if not int8:
        return data
    validation = sample_batches(config, "test", max(sizes.validation, sizes.parity), seed=seed)
    calibration = sample_batches(config, "train", sizes.calibration, seed=seed + 1)
    return replace(
        data,
        validation=ImageSample(tuple(validation), f"{_count(validation)} validation images of {info.name} (seed {seed})"),
        calibration=ImageSample(tuple(calibration), f"{_count(calibration)} training-split images of {info.name} "
                                                    f"(eval transform, seed {seed + 1})"),
    )


def _count(batches: Sequence[Batch]) -> int:
    return sum(len(y) for _, y in batches)
