"""Custom data: an image folder per split (`<dir>/train/<class>/*.png`, `<dir>/val/<class>/*.png`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from nasdeploy.data.images import load_rgb
from nasdeploy.errors import DataError

SPLIT_FOLDERS: dict[str, tuple[str, ...]] = {"train": ("train",), "test": ("val", "test")}
LAYOUT = "<data_dir>/train/<class_name>/<image> and <data_dir>/val/<class_name>/<image>"


def find_split_dir(data_dir: str | os.PathLike[str] | None, split: str) -> Path:
    """The folder of one split: train/ for 'train', val/ (or test/) for 'test'."""
    if data_dir is None:
        raise DataError(f"dataset 'imagefolder' needs a data directory (--data-dir DIR) laid out as {LAYOUT}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"image-folder data directory does not exist: {root} (expected {LAYOUT})")
    if split not in SPLIT_FOLDERS:
        raise DataError(f"image-folder split must be 'train' or 'test', got {split!r}")
    for name in SPLIT_FOLDERS[split]:
        if (root / name).is_dir():
            return root / name
    wanted = " or ".join(f"{root / n}/" for n in SPLIT_FOLDERS[split])
    raise DataError(f"image-folder dataset: no {wanted} found (expected {LAYOUT})")


def load_image_folder(data_dir: str | os.PathLike[str] | None, split: str,
                      transform: Callable | None = None, classes: tuple[str, ...] | None = None) -> ImageFolder:
    """torchvision's ImageFolder over one split (images within the pixel limit), one-line errors for bad folders."""
    folder = find_split_dir(data_dir, split)
    try:
        dataset = ImageFolder(str(folder), transform=transform, loader=load_rgb)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"image-folder dataset {folder}: {str(exc).splitlines()[0]} "
                        f"(expected class sub-folders with {', '.join(IMG_EXTENSIONS[:4])}... images)") from None
    if classes is not None and tuple(dataset.classes) != tuple(classes):
        raise DataError(f"image-folder dataset {folder}: classes {dataset.classes[:5]}... differ from the "
                        f"train split's {list(classes)[:5]}...; both splits need the same class folders")
    return dataset
