"""Image files opened within the pixel limit: the size is read from the header and checked before decoding."""

from __future__ import annotations

import os
import warnings
from typing import Any

from nasdeploy.errors import DataError
from nasdeploy.utils.limits import IMAGE_PIXELS


def open_image(path: str | os.PathLike[str], mode: str | None = None) -> Any:
    """A decoded PIL image (converted to `mode` when given); oversized or unreadable files are one-line errors.

    Pillow's decompression-bomb guard is set from IMAGE_PIXELS and its warning made an error, so a file whose
    header claims more pixels is refused before any pixel is decoded.
    """
    from PIL import Image  # torchvision depends on Pillow

    limit = IMAGE_PIXELS.value()
    Image.MAX_IMAGE_PIXELS = limit  # Pillow's guard reads this setting at every open
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)  # lazy: reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise IMAGE_PIXELS.exceeded(f"image {path}", limit=limit) from None
    except OSError as exc:  # missing, unreadable or not an image (UnidentifiedImageError)
        raise DataError(f"cannot read image {path}: {_first_line(exc)}") from None
    with image:
        width, height = image.size
        IMAGE_PIXELS.check(f"image {path} ({width}x{height})", width * height)
        try:
            return image.convert(mode) if mode is not None else image.copy()
        except OSError as exc:  # a truncated or corrupt body
            raise DataError(f"cannot decode image {path}: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_rgb(path: str) -> Any:
    """ImageFolder's loader: an RGB PIL image within the pixel limit."""
    return open_image(path, "RGB")
