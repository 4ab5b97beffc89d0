"""Segmentation data: Cityscapes local reader, paired augmentation, synthetic demo, mIoU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasdeploy.data.segmentation import (
    IGNORE_INDEX,
    CityscapesSegmentation,
    SegAugment,
    SegDataConfig,
    apply_augment,
    build_segmentation_dataset,
    cityscapes_lut,
    generate_shapes,
)
from nasdeploy.errors import ConfigError, DataError
from nasdeploy.tasks.segmentation import ConfusionMatrix

IDENTITY = SegAugment(None, (1.0, 1.0), False, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def _write_cityscapes(root, split="train", cities=("aachen", "bremen"), size=(8, 16)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for city in cities:
        for k in range(2):
            stem = f"{city}_{k:06d}_000019"
            img_dir = root / "leftImg8bit" / split / city
            lab_dir = root / "gtFine" / split / city
            img_dir.mkdir(parents=True, exist_ok=True)
            lab_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(img_dir / f"{stem}_leftImg8bit.png")
            ids = np.arange(size[0] * size[1]).reshape(size) % 34
            Image.fromarray(ids.astype(np.uint8)).save(lab_dir / f"{stem}_gtFine_labelIds.png")


def test_cityscapes_label_mapping_is_the_official_one():
    lut = cityscapes_lut()
    # road, sidewalk, building, ..., bicycle -> 0..18; void ids (0-6, 9, 10, 14-16, 18, 29, 30) ignored
    assert [int(lut[i]) for i in (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)] == list(range(19))
    assert all(lut[i] == IGNORE_INDEX for i in (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, 255))


def test_cityscapes_reader(tmp_path):
    _write_cityscapes(tmp_path)
    ds = CityscapesSegmentation(tmp_path, "train", IDENTITY)
    assert len(ds) == 4 and ds.pairs[0][0].parent.name == "aachen"
    image, label = ds[0]
    assert image.shape == (3, 8, 16) and label.shape == (8, 16) and label.dtype == torch.int64
    ids = np.arange(128).reshape(8, 16) % 34
    np.testing.assert_array_equal(label.numpy(), cityscapes_lut()[ids])
    half = CityscapesSegmentation(tmp_path, "train", IDENTITY, downsample=0.5)
    assert half[0][1].shape == (4, 8)


def test_cityscapes_errors_are_one_line(tmp_path):
    with pytest.raises(DataError, match="Cityscapes root not found"):
        CityscapesSegmentation(tmp_path / "nope", "train", IDENTITY)
    _write_cityscapes(tmp_path)
    with pytest.raises(DataError, match="split folder missing: .*leftImg8bit/val"):
        CityscapesSegmentation(tmp_path, "val", IDENTITY)
    next((tmp_path / "gtFine" / "train" / "bremen").glob("*.png")).unlink()
    with pytest.raises(DataError, match="label missing for bremen_"):
        CityscapesSegmentation(tmp_path, "train", IDENTITY)
    # The root may come from --data-dir, so the config accepts none; building the dataset without one is refused.
    from nasdeploy.data.segmentation import build_segmentation_dataset, with_data_dir

    with pytest.raises(ConfigError, match=r"data.root \(or --data-dir\) must name"):
        build_segmentation_dataset(SegDataConfig(dataset="cityscapes"), "train", train=True)
    assert with_data_dir(SegDataConfig(dataset="cityscapes"), tmp_path).root == str(tmp_path)


def test_augmentation_keeps_image_and_label_aligned():
    label = torch.arange(20 * 30).reshape(20, 30) % 7
    image = (label.float() / 10.0).expand(3, -1, -1).clone()
    aug = SegAugment((16, 24), (1.0, 1.0), True, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    for seed in range(5):
        img, lab = apply_augment(image, label, aug, torch.Generator().manual_seed(seed))
        assert img.shape == (3, 16, 24) and lab.shape == (16, 24)
        torch.testing.assert_close(img[0], lab.float() / 10.0)
    # A crop larger than the image pads with ignored labels and zero (the mean) pixels.
    big = SegAugment((24, 40), (1.0, 1.0), False, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    img, lab = apply_augment(image, label, big, torch.Generator().manual_seed(0))
    assert img.shape == (3, 24, 40) and (lab == IGNORE_INDEX).sum() == 24 * 40 - 20 * 30
    assert img[:, lab == IGNORE_INDEX].abs().sum() == 0
    scaled = SegAugment((16, 16), (0.5, 2.0), True)
    for seed in range(3):
        img, lab = apply_augment(image, label, scaled, torch.Generator().manual_seed(seed))
        assert img.shape == (3, 16, 16) and lab.shape == (16, 16)
        assert set(lab.unique().tolist()) <= set(range(7)) | {IGNORE_INDEX}  # nearest: no invented classes


def test_synthetic_is_deterministic_and_labelled():
    a_img, a_lab = generate_shapes(16, (32, 48), seed=3)
    b_img, b_lab = generate_shapes(16, (32, 48), seed=3)
    c_img, _ = generate_shapes(16, (32, 48), seed=4)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab) and not np.array_equal(a_img, c_img)
    assert a_img.shape == (16, 32, 48, 3) and a_lab.shape == (16, 32, 48)
    assert set(np.unique(a_lab)) == {0, 1, 2, 3}
    # Prefix-stable: sample i depends on (seed, i) only.
    assert np.array_equal(generate_shapes(4, (32, 48), seed=3)[1], a_lab[:4])
    train = build_segmentation_dataset(SegDataConfig(num_train=4, num_val=4), "train", train=True)
    val = build_segmentation_dataset(SegDataConfig(num_train=4, num_val=4), "val", train=False)
    assert not np.array_equal(train.images, val.images)  # splits use disjoint seeds


def test_confusion_matrix_iou():
    cm = ConfusionMatrix(3)
    target = torch.tensor([[0, 0, 1, 1], [2, 2, IGNORE_INDEX, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm.update(pred, target)
    # class 0: tp 2, fp 1, fn 1 -> 2/4; class 1: tp 2, fp 1, fn 0 -> 2/3; class 2: tp 1, fp 0, fn 1 -> 1/2
    torch.testing.assert_close(cm.iou(), torch.tensor([0.5, 2 / 3, 0.5], dtype=torch.float64))
    assert cm.miou() == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert cm.pixel_accuracy() == pytest.approx(5 / 7)
