"""data.holdout: both splits come from the training images, the held-out part is a fixed random sample."""

from __future__ import annotations

import numpy as np
import pytest

from nasdeploy.data import factory
from nasdeploy.data.factory import DataConfig, build_dataset
from nasdeploy.errors import ConfigError


def _images(dataset) -> np.ndarray:
    return np.stack([dataset[i][0].numpy() for i in range(len(dataset))])


def test_holdout_splits_the_training_images_and_never_reads_the_test_split(monkeypatch):
    cfg = DataConfig(dataset="demo", demo_train_size=50, augment="none", holdout=0.2)
    full, _ = build_dataset(DataConfig(dataset="demo", demo_train_size=50, augment="none"), "train", augment=False)
    read = []
    arrays = factory._arrays
    monkeypatch.setattr(factory, "_arrays", lambda c, split, root: read.append(split) or arrays(c, split, root))
    train, _ = build_dataset(cfg, "train", augment=False)
    held, _ = build_dataset(cfg, "test", augment=False)
    assert read == ["train", "train"] and (len(train), len(held)) == (40, 10)
    assert sorted(train.indices + held.indices) == list(range(50))
    assert held.indices != list(range(40, 50))  # a random sample, not the tail (folders are sorted by class)
    np.testing.assert_array_equal(_images(held), _images(full)[held.indices])
    assert build_dataset(cfg, "test", augment=False)[0].indices == held.indices  # the same sample every time
    subset, _ = build_dataset(DataConfig(dataset="demo", demo_train_size=50, augment="none", holdout=0.2,
                                         subset=20, test_subset=3), "test", augment=False)
    assert len(subset) == 3 and max(subset.dataset.indices) < 20


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_a_holdout_outside_0_1_is_refused(bad):
    with pytest.raises(ConfigError, match="data.holdout must be a fraction in"):
        DataConfig(holdout=bad)
