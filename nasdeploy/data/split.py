"""The DARTS split of a training set into a weight half and an architecture half."""

from __future__ import annotations

import math

from nasdeploy.errors import ConfigError


def search_split(n: int, portion: float = 0.5) -> tuple[range, range]:
    """(weight indices, architecture indices): the first `portion` of the images trains w, the rest alpha."""
    if not 0.0 < portion < 1.0:
        raise ConfigError(f"train portion must be strictly between 0 and 1, got {portion}")
    cut = int(math.floor(portion * n))
    if cut < 1 or cut >= n:
        raise ConfigError(f"cannot split {n} images with portion {portion}: both halves need at least one image")
    return range(0, cut), range(cut, n)
