"""An in-memory image dataset over a uint8 [N, H, W, 3] array (CIFAR and the demo data)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset


class ArrayImageDataset(Dataset):
    """(transform(image CHW uint8 tensor), label) pairs over in-memory arrays."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable | None = None):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.images[index]
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[index])
