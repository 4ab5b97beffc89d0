"""One way in to every image-classification dataset: DataConfig -> (dataset, DatasetInfo)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from torch.utils.data import Dataset, Subset

from nasdeploy.data.arrays import ArrayImageDataset
from nasdeploy.data.demo import DEMO_IMAGE_SIZE
from nasdeploy.data.transforms import AUGMENTS, check_normalisation, eval_transform, train_transform
from nasdeploy.errors import ConfigError
from nasdeploy.utils.limits import INPUT_SIDE, check_generated_data, check_seed

DATASETS = ("demo", "cifar10", "cifar100", "imagefolder")

NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, where, how much of it and how it is augmented."""

    dataset: str = "cifar10"  # demo | cifar10 | cifar100 | imagefolder
    data_dir: Optional[str] = None
    subset: Optional[int] = None  # use only the first N training images
    test_subset: Optional[int] = None  # evaluate on only the first N test images
    # Hold out this fraction of the training images (a fixed random sample) and evaluate on them instead of the
    # test split, which is then never read: validation for model selection that leaves the test set untouched.
    holdout: float = 0.0
    num_workers: int = 0
    augment: str = "cifar"  # cifar (pad-4 crop + flip) | imagenet | none
    image_size: int = 32
    cutout: int = 0  # cutout length in pixels (0: off)
    cutout_prob: float = 1.0
    demo_train_size: int = 5000
    demo_test_size: int = 1000
    demo_seed: int = 0
    mean: Optional[tuple[float, float, float]] = None  # default: the dataset's statistics
    std: Optional[tuple[float, float, float]] = None

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(f"data.dataset: unknown dataset '{self.dataset}'; choose one of: {', '.join(DATASETS)}")
        if self.augment not in AUGMENTS:
            raise ConfigError(f"data.augment: unknown augment '{self.augment}'; choose one of: {', '.join(AUGMENTS)}")
        for key in ("subset", "test_subset"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"data.{key} must be a positive number of images, got {value}")
        if not 0.0 <= self.holdout < 1.0:
            raise ConfigError(f"data.holdout must be a fraction in [0, 1), got {self.holdout}")
        for key in ("demo_train_size", "demo_test_size", "image_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"data.{key} must be positive, got {getattr(self, key)}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.cutout < 0:
            raise ConfigError(f"data.cutout must be >= 0, got {self.cutout}")
        if not 0.0 <= self.cutout_prob <= 1.0:
            raise ConfigError(f"data.cutout_prob must be in [0, 1], got {self.cutout_prob}")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) != 3:
                raise ConfigError(f"data.{key} must have 3 values (R, G, B), got {list(value)}")
        check_normalisation("data", self.mean, self.std)
        INPUT_SIDE.check("data.image_size", self.image_size)
        check_seed("data.demo_seed", self.demo_seed)
        if self.dataset == "demo":  # generated in memory: refuse a size that cannot fit before generating it
            for key in ("demo_train_size", "demo_test_size"):
                check_generated_data(f"data.{key}", getattr(self, key), DEMO_IMAGE_SIZE * DEMO_IMAGE_SIZE * 3)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about the data: classes, input size, normalisation."""

    name: str
    num_classes: int
    classes: tuple[str, ...]
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        """A JSON-able form (for run metadata)."""
        return {"name": self.name, "num_classes": self.num_classes, "image_size": self.image_size,
                "mean": list(self.mean), "std": list(self.std), "classes": list(self.classes)}


def build_dataset(cfg: DataConfig, split: str, augment: bool, data_dir: str | None = None) -> tuple[Dataset, DatasetInfo]:
    """The 'train' or 'test' split with training augmentation (augment=True) or the eval transform.

    `data_dir` overrides cfg.data_dir. `cfg.subset` / `cfg.test_subset` keep the first N images. With
    `cfg.holdout` both splits come from the (subset of the) training images: 'test' is the held-out part.
    """
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    root = data_dir if data_dir is not None else cfg.data_dir
    source = "train" if cfg.holdout > 0 else split
    if cfg.dataset == "imagefolder":
        dataset, info = _image_folder(cfg, source, augment, root)
    else:
        images, labels, classes = _arrays(cfg, source, root)
        mean, std = _normalisation(cfg)
        native = images.shape[1]
        if augment:
            tf = train_transform(cfg.augment, cfg.image_size, mean, std, cfg.cutout, cfg.cutout_prob, native_size=native)
        else:
            tf = eval_transform(cfg.augment, cfg.image_size, mean, std, native_size=native)
        dataset = ArrayImageDataset(images, labels, tf)
        info = DatasetInfo(cfg.dataset, len(classes), tuple(classes), cfg.image_size, mean, std)
    if source == "train" and cfg.subset is not None and cfg.subset < len(dataset):
        dataset = Subset(dataset, range(cfg.subset))
    if cfg.holdout > 0:
        dataset = _holdout_part(dataset, cfg.holdout, split)
    if split == "test" and cfg.test_subset is not None and cfg.test_subset < len(dataset):
        dataset = Subset(dataset, range(cfg.test_subset))
    return dataset, info


def _holdout_part(dataset: Dataset, fraction: float, split: str) -> Dataset:
    """The training ('train') or held-out ('test') part of a training set: a fixed random sample (seed 0), so
    that class-sorted folders split evenly; each part keeps the images' order."""
    n = len(dataset)
    held = max(1, round(n * fraction))
    if held >= n:
        raise ConfigError(f"data.holdout {fraction} leaves no training images out of {n}")
    order = np.random.default_rng(0).permutation(n)
    part = order[n - held:] if split == "test" else order[: n - held]
    return Subset(dataset, np.sort(part).tolist())


def _normalisation(cfg: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if cfg.dataset == "demo":
        from nasdeploy.data.demo import DEMO_MEAN, DEMO_STD

        default = (DEMO_MEAN, DEMO_STD)
    else:
        default = NORMALISATION[cfg.dataset]
    mean = tuple(float(v) for v in cfg.mean) if cfg.mean is not None else default[0]
    std = tuple(float(v) for v in cfg.std) if cfg.std is not None else default[1]
    return mean, std


def _arrays(cfg: DataConfig, split: str, root: str | None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    if cfg.dataset == "demo":
        from nasdeploy.data.demo import DEMO_CLASSES, generate_demo

        n = cfg.demo_train_size if split == "train" else cfg.demo_test_size
        images, labels = generate_demo(n, cfg.demo_seed, split)
        return images, labels, DEMO_CLASSES
    from nasdeploy.data.cifar import read_cifar

    return read_cifar(cfg.dataset, root, split)


def _image_folder(cfg: DataConfig, split: str, augment: bool, root: str | None) -> tuple[Dataset, DatasetInfo]:
    from nasdeploy.data.image_folder import load_image_folder

    mean, std = _normalisation(cfg)
    if augment:
        tf = train_transform(cfg.augment, cfg.image_size, mean, std, cfg.cutout, cfg.cutout_prob, native_size=None)
    else:
        tf = eval_transform(cfg.augment, cfg.image_size, mean, std, native_size=None)
    classes = None
    if split == "test":
        classes = tuple(load_image_folder(root, "train").classes)
    dataset = load_image_folder(root, split, tf, classes)
    info = DatasetInfo("imagefolder", len(dataset.classes), tuple(dataset.classes), cfg.image_size, mean, std)
    return dataset, info
