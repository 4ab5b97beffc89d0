"""The built-in demo dataset: CIFAR-shaped images of shapes x textures, generated from a seed.

Ten classes: five shapes (disc, square, triangle, ring, cross) times two fillings (plain, striped),
each drawn with a random position, size, rotation, colours, stripe period/orientation, background
gradient and pixel noise. Telling shapes apart needs spatial context and telling fillings apart needs
fine texture, so pooling vs convolution choices matter; a small CNN learns it well above chance.
Nothing is downloaded or stored: the same seed always gives the same bytes.
"""

from __future__ import annotations

import numpy as np

from nasdeploy.errors import ConfigError
from nasdeploy.utils.limits import INPUT_SIDE, check_generated_data, check_seed

DEMO_SHAPES: tuple[str, ...] = ("disc", "square", "triangle", "ring", "cross")
DEMO_FILLS: tuple[str, ...] = ("plain", "striped")
DEMO_CLASSES: tuple[str, ...] = tuple(f"{fill}_{shape}" for fill in DEMO_FILLS for shape in DEMO_SHAPES)
DEMO_IMAGE_SIZE = 32
# Channel statistics of the generator (measured on 20,000 images; a test recomputes them).
DEMO_MEAN: tuple[float, float, float] = (0.481, 0.481, 0.481)
DEMO_STD: tuple[float, float, float] = (0.292, 0.292, 0.292)

_SPLIT_STREAM = {"train": 0, "test": 1}
_CHUNK = 1024


def generate_demo(n: int, seed: int = 0, split: str = "train", size: int = DEMO_IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """`n` images (uint8 [n, size, size, 3]) and balanced labels (int64 [n]) for a seed and split."""
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"demo dataset size must be a positive integer, got {n!r}")
    if split not in _SPLIT_STREAM:
        raise ConfigError(f"demo split must be 'train' or 'test', got {split!r}")
    if size < 8:
        raise ConfigError(f"demo image size must be >= 8, got {size}")
    INPUT_SIDE.check("demo image size", size)
    check_seed("demo seed", seed)
    check_generated_data("demo dataset", n, size * size * 3)
    rng = np.random.default_rng([seed, _SPLIT_STREAM[split]])
    labels = rng.permutation(np.arange(n) % len(DEMO_CLASSES)).astype(np.int64)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        images[start:stop] = _render(labels[start:stop], rng, size)
    return images, labels


def _render(labels: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    m = len(labels)
    shape_id = labels % len(DEMO_SHAPES)
    striped = labels // len(DEMO_SHAPES) == 1

    def u(lo: float, hi: float, *shape: int) -> np.ndarray:
        return rng.uniform(lo, hi, size=(m, *shape)).astype(np.float32)

    cx, cy = u(0.3, 0.7) * size, u(0.3, 0.7) * size
    radius = u(0.22, 0.36) * size
    theta = u(0.0, 2 * np.pi)
    bg = u(0.0, 1.0, 3)
    fg = np.mod(bg + u(0.3, 0.7, 3), 1.0)
    stripe_angle, stripe_period, stripe_phase = u(0.0, np.pi), u(2.5, 4.5), u(0.0, 2 * np.pi)
    gradient = u(-0.25, 0.25, 2)
    noise_std = u(0.03, 0.10)

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx = xx[None] + 0.5 - cx[:, None, None]
    dy = yy[None] + 0.5 - cy[:, None, None]
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    uu, vv = cos * dx + sin * dy, -sin * dx + cos * dy
    r = radius[:, None, None]
    dist = np.sqrt(uu ** 2 + vv ** 2)

    # A signed distance-like margin per shape (positive inside); masks are anti-aliased over one pixel.
    margins = np.empty_like(dist)
    for k, name in enumerate(DEMO_SHAPES):
        sel = shape_id == k
        if not sel.any():
            continue
        a, b, d, rr = uu[sel], vv[sel], dist[sel], r[sel]
        if name == "disc":
            margin = rr - d
        elif name == "square":
            margin = 0.8 * rr - np.maximum(np.abs(a), np.abs(b))
        elif name == "triangle":
            sides = [a * np.cos(t) + b * np.sin(t) for t in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3)]
            margin = 0.5 * rr - np.maximum(np.maximum(sides[0], sides[1]), sides[2])
        elif name == "ring":
            margin = np.minimum(d - 0.5 * rr, rr - d)
        else:  # cross
            arm = 0.3 * rr
            margin = np.maximum(np.minimum(arm - np.abs(a), rr - np.abs(b)), np.minimum(arm - np.abs(b), rr - np.abs(a)))
        margins[sel] = margin
    mask = np.clip(margins + 0.5, 0.0, 1.0)[..., None]

    phase = (np.cos(stripe_angle)[:, None, None] * xx[None] + np.sin(stripe_angle)[:, None, None] * yy[None])
    wave = np.sin(2 * np.pi * phase / stripe_period[:, None, None] + stripe_phase[:, None, None])
    stripes = np.clip(wave * 2.0 + 0.5, 0.0, 1.0)[..., None]  # near-binary stripes with soft edges
    dark = fg * 0.3
    fill = np.where(striped[:, None, None, None], stripes * fg[:, None, None] + (1 - stripes) * dark[:, None, None],
                    fg[:, None, None])

    ramp = gradient[:, 0, None, None] * (xx[None] / size - 0.5) + gradient[:, 1, None, None] * (yy[None] / size - 0.5)
    background = bg[:, None, None] + ramp[..., None]
    img = mask * fill + (1 - mask) * background
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * noise_std[:, None, None, None]
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
