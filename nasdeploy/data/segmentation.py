"""Segmentation data: Cityscapes from a local directory (never downloaded), a synthetic shapes demo, paired transforms.

Samples are (image float32 [3, H, W] normalised, label int64 [H, W]) with IGNORE_INDEX for unlabelled pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from nasdeploy.data.images import open_image
from nasdeploy.data.transforms import check_normalisation
from nasdeploy.errors import ConfigError, DataError
from nasdeploy.utils.checks import check_positive
from nasdeploy.utils.limits import check_generated_data, check_input_size, check_seed

IGNORE_INDEX = 255

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip

# Cityscapes labelIds (0..33) -> the 19 trainIds; every other id is ignored.
_LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                   26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def cityscapes_lut() -> np.ndarray:
    """A 256-entry lookup table from labelId to trainId (IGNORE_INDEX for void classes)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in _LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    return lut


SYNTHETIC_CLASSES: tuple[str, ...] = ("background", "rectangle", "ellipse", "triangle")
# The coarsest Auto-DeepLab level (4 levels from stride 4): a training image smaller than this makes that level's
# feature one pixel covering more than the image, and the search of the stride-32 cells meaningless.
MAX_OUTPUT_STRIDE = 32
CITYSCAPES_MEAN = (0.5, 0.5, 0.5)  # the released model maps [0, 255] to [-1, 1]
CITYSCAPES_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class SegAugment:
    """Paired augmentation: random scale, pad to the crop, random crop, horizontal flip, normalise."""

    crop_size: tuple[int, int] | None = None  # (H, W); None keeps the full image
    scale_range: tuple[float, float] = (1.0, 1.0)
    flip: bool = False
    mean: tuple[float, ...] = CITYSCAPES_MEAN
    std: tuple[float, ...] = CITYSCAPES_STD

    def __post_init__(self) -> None:
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ConfigError(f"scale_range must satisfy 0 < min <= max, got {self.scale_range}")
        if self.crop_size is not None and min(self.crop_size) < 1:
            raise ConfigError(f"crop_size must be positive, got {self.crop_size}")
        if len(self.mean) != len(self.std):
            raise ConfigError(f"mean and std must have one value per channel each, "
                              f"got {list(self.mean)} and {list(self.std)}")
        check_normalisation("augment", self.mean, self.std)


def apply_augment(image: torch.Tensor, label: torch.Tensor, aug: SegAugment,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply `aug` to an image in [0, 1] ([3, H, W]) and its label ([H, W]) with the same geometry."""
    lo, hi = aug.scale_range
    if hi > lo or lo != 1.0:
        scale = lo + (hi - lo) * float(torch.rand((), generator=generator))
        h, w = label.shape
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
    mean = torch.tensor(aug.mean, dtype=image.dtype).view(-1, 1, 1)
    std = torch.tensor(aug.std, dtype=image.dtype).view(-1, 1, 1)
    image = (image - mean) / std
    if aug.crop_size is not None:
        ch, cw = aug.crop_size
        h, w = label.shape
        pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
        if pad_h or pad_w:  # pad with the mean (0 after normalising) and ignored labels
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
            label = F.pad(label, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
            h, w = label.shape
        top = int(torch.randint(0, h - ch + 1, (), generator=generator))
        left = int(torch.randint(0, w - cw + 1, (), generator=generator))
        image = image[:, top:top + ch, left:left + cw]
        label = label[top:top + ch, left:left + cw]
    if aug.flip and float(torch.rand((), generator=generator)) < 0.5:
        image, label = image.flip(-1), label.flip(-1)
    return image.contiguous(), label.contiguous()


class SegmentationArrays(Dataset):
    """In-memory images (uint8 [N, H, W, 3]) and labels (uint8 [N, H, W]) with a paired augmentation."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: SegAugment):
        if images.shape[:3] != labels.shape:
            raise DataError(f"images {images.shape} and labels {labels.shape} do not pair up")
        self.images, self.labels, self.augment = images, labels, augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(self.images[index]).permute(2, 0, 1).float().div_(255.0)
        label = torch.from_numpy(self.labels[index].astype(np.int64))
        return apply_augment(image, label, self.augment)


def generate_shapes(n: int, size: tuple[int, int] = (64, 64), seed: int = 0, max_shapes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Procedural segmentation demo: noisy backgrounds with rectangles, ellipses and triangles (labels 1, 2, 3).

    Deterministic by seed: sample i depends only on (seed, i). Each class has its own colour family,
    jittered per shape, so a small network can learn it in minutes; overlaps are resolved by drawing order.
    """
    h, w = size
    check_input_size("synthetic image", h, w)
    check_generated_data("synthetic dataset", n, h * w * 4)
    images = np.empty((n, h, w, 3), dtype=np.uint8)
    labels = np.zeros((n, h, w), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.array([[0.45, 0.45, 0.45], [0.85, 0.25, 0.2], [0.2, 0.75, 0.3], [0.25, 0.35, 0.9]], dtype=np.float32)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        img = base[0] + rng.uniform(-0.25, 0.25, size=3).astype(np.float32)
        img = np.broadcast_to(img, (h, w, 3)).copy()
        img += 0.08 * np.sin(xx[..., None] / rng.uniform(3, 9) + rng.uniform(0, 6)) * rng.uniform(0.5, 1.5, 3)
        lab = labels[i]
        for _ in range(int(rng.integers(1, max_shapes + 1))):
            cls = int(rng.integers(1, 4))
            cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
            ry, rx = rng.uniform(0.1, 0.3) * h, rng.uniform(0.1, 0.3) * w
            if cls == 1:
                mask = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
            elif cls == 2:
                mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
            else:  # upward triangle: apex at the top, base at the bottom
                t = (yy - (cy - ry)) / (2 * ry)
                mask = (t >= 0) & (t <= 1) & (np.abs(xx - cx) <= t * rx)
            colour = base[cls] + rng.uniform(-0.12, 0.12, size=3).astype(np.float32)
            img[mask] = colour
            lab[mask] = cls
        img += rng.normal(0, 0.04, size=img.shape).astype(np.float32)
        images[i] = np.clip(img * 255.0, 0, 255).astype(np.uint8)
    return images, labels


def synthetic_segmentation(split: str, n: int, size: tuple[int, int], seed: int, augment: SegAugment) -> SegmentationArrays:
    """The built-in demo dataset; splits draw from disjoint seeds."""
    offsets = {"train": 0, "val": 1_000_003, "test": 2_000_029}
    if split not in offsets:
        raise DataError(f"unknown split '{split}' for the synthetic dataset; choose one of: {', '.join(offsets)}")
    images, labels = generate_shapes(n, size, seed + offsets[split])
    return SegmentationArrays(images, labels, augment)


def find_cityscapes_pairs(root: str | os.PathLike[str], split: str) -> list[tuple[Path, Path]]:
    """(image, labelIds) path pairs of a Cityscapes split in the standard leftImg8bit/gtFine layout."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"Cityscapes root not found: {base} (expected leftImg8bit/ and gtFine/ inside; nothing is downloaded)")
    image_dir, label_dir = base / "leftImg8bit" / split, base / "gtFine" / split
    for d in (image_dir, label_dir):
        if not d.is_dir():
            raise DataError(f"Cityscapes split folder missing: {d} (standard layout: <root>/leftImg8bit/{split}/<city>/ and <root>/gtFine/{split}/<city>/)")
    images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        raise DataError(f"no *_leftImg8bit.png images under {image_dir}/<city>/")
    pairs = []
    for img in images:
        stem = img.name[: -len("_leftImg8bit.png")]
        label = label_dir / img.parent.name / f"{stem}_gtFine_labelIds.png"
        if not label.is_file():
            raise DataError(f"Cityscapes label missing for {img.name}: expected {label}")
        pairs.append((img, label))
    return pairs


class CityscapesSegmentation(Dataset):
    """Cityscapes fine annotations from a local directory: labelIds mapped to the 19 trainIds, ignore 255."""

    def __init__(self, root: str | os.PathLike[str], split: str, augment: SegAugment, downsample: float = 1.0,
                 indices: Sequence[int] | None = None):
        self.pairs = find_cityscapes_pairs(root, split)
        if indices is not None:
            self.pairs = [self.pairs[i] for i in indices]
        self.augment = augment
        self.downsample = downsample
        self.lut = torch.from_numpy(cityscapes_lut().astype(np.int64))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img_path, label_path = self.pairs[index]
        image = np.asarray(open_image(img_path, "RGB"))
        label_ids = np.asarray(open_image(label_path))
        image_t = torch.from_numpy(image.copy()).permute(2, 0, 1).float().div_(255.0)
        label = self.lut[torch.from_numpy(label_ids.astype(np.int64))]
        if self.downsample != 1.0:  # e.g. 0.5: the half-resolution (512x1024) images the search uses
            h, w = label.shape
            size = (round(h * self.downsample), round(w * self.downsample))
            image_t = F.interpolate(image_t[None], size=size, mode="bilinear", align_corners=False)[0]
            label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
        return apply_augment(image_t, label, self.augment)


@dataclass(frozen=True)
class SegDataConfig:
    """Which segmentation data to use and how to augment it."""

    dataset: str = "synthetic"  # synthetic | cityscapes
    root: str | None = None  # Cityscapes root (leftImg8bit/, gtFine/)
    image_size: tuple[int, int] = (64, 64)  # synthetic images
    num_train: int = 64  # synthetic sizes
    num_val: int = 32
    seed: int = 0
    downsample: float = 1.0  # Cityscapes: 0.5 gives the search's 512x1024
    crop_size: tuple[int, int] | None = (64, 64)
    scale_range: tuple[float, float] = (0.75, 1.25)
    flip: bool = True

    def __post_init__(self) -> None:
        if self.dataset not in ("synthetic", "cityscapes"):
            raise ConfigError(f"unknown segmentation dataset '{self.dataset}'; choose synthetic or cityscapes")
        for key in ("image_size", "crop_size", "scale_range"):
            value = getattr(self, key)
            if value is not None and len(value) != 2:
                raise ConfigError(f"data.{key} must hold two values (height, width), got {list(value)}")
        if min(self.image_size) < 1 or (self.crop_size is not None and min(self.crop_size) < 1):
            raise ConfigError(f"data.image_size and data.crop_size must be positive, got {list(self.image_size)} "
                              f"and {None if self.crop_size is None else list(self.crop_size)}")
        check_positive("data", num_train=self.num_train, num_val=self.num_val, downsample=self.downsample)
        for key in ("image_size", "crop_size"):
            if getattr(self, key) is not None:
                check_input_size(f"data.{key}", *getattr(self, key))
        check_seed("data.seed", self.seed)
        if self.dataset == "synthetic":  # generated in memory (image + label: 4 bytes a pixel)
            for key in ("num_train", "num_val"):
                check_generated_data(f"data.{key}", getattr(self, key), 4 * self.image_size[0] * self.image_size[1])
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ConfigError(f"data.scale_range must satisfy 0 < min <= max, got {list(self.scale_range)}")
        train_size = self.crop_size or (self.image_size if self.dataset == "synthetic" else None)
        if train_size is not None and min(train_size) < MAX_OUTPUT_STRIDE:
            which = "crop_size" if self.crop_size else "image_size"
            raise ConfigError(f"data.{which} {list(train_size)} is smaller than Auto-DeepLab's output stride "
                              f"{MAX_OUTPUT_STRIDE} (its stride-{MAX_OUTPUT_STRIDE} level would see less than one "
                              f"pixel); use at least {MAX_OUTPUT_STRIDE}x{MAX_OUTPUT_STRIDE}")


def dataset_classes(cfg: SegDataConfig) -> tuple[str, ...]:
    """Class names of the configured dataset."""
    return SYNTHETIC_CLASSES if cfg.dataset == "synthetic" else CITYSCAPES_CLASSES


def build_segmentation_dataset(cfg: SegDataConfig, split: str, train: bool) -> Dataset:
    """The dataset for `split` ('train' | 'val'), augmented when `train`."""
    mean, std = CITYSCAPES_MEAN, CITYSCAPES_STD
    if train:
        augment = SegAugment(cfg.crop_size, cfg.scale_range, cfg.flip, mean, std)
    else:
        augment = SegAugment(None, (1.0, 1.0), False, mean, std)
    if cfg.dataset == "synthetic":
        n = cfg.num_train if split == "train" else cfg.num_val
        return synthetic_segmentation(split, n, tuple(cfg.image_size), cfg.seed, augment)
    if not cfg.root:
        raise ConfigError("data.root (or --data-dir) must name the local Cityscapes directory (it is never downloaded)")
    return CityscapesSegmentation(cfg.root, split, augment, downsample=cfg.downsample)



def with_data_dir(cfg: SegDataConfig, data_dir: str | os.PathLike[str] | None) -> SegDataConfig:
    """The data config with `data_dir` as the Cityscapes root (when given); the synthetic data ignores it."""
    if data_dir is None or cfg.dataset != "cityscapes":
        return cfg
    return replace(cfg, root=os.fspath(data_dir))
