"""Registry of published genotypes by name (data from the papers and reference implementations)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from nasdeploy.errors import GenotypeError
from nasdeploy.genotypes.model import CNNGenotype, Genotype, RecurrentGenotype
from nasdeploy.genotypes.validate import nearest_name, validate_cnn_genotype, validate_recurrent_genotype


def _cnn(name: str, normal, normal_concat, reduce, reduce_concat) -> CNNGenotype:
    return validate_cnn_genotype(
        CNNGenotype(tuple(normal), tuple(normal_concat), tuple(reduce), tuple(reduce_concat), name=name)
    )


_PNAS_CELL = [
    ("sep_conv_5x5", 0), ("max_pool_3x3", 0),
    ("sep_conv_7x7", 1), ("max_pool_3x3", 1),
    ("sep_conv_5x5", 1), ("sep_conv_3x3", 1),
    ("sep_conv_3x3", 4), ("max_pool_3x3", 1),
    ("sep_conv_3x3", 0), ("skip_connect", 1),
]  # fmt: skip

_GENOTYPES: dict[str, Genotype] = {
    "DARTS_V1": _cnn(
        "DARTS_V1",
        [("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
         ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
        [2, 3, 4, 5],
        [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
         ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
        [2, 3, 4, 5],
    ),
    "DARTS_V2": _cnn(
        "DARTS_V2",
        [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
         ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
        [2, 3, 4, 5],
        [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
         ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
        [2, 3, 4, 5],
    ),
    "NASNet": _cnn(
        "NASNet",
        [("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 0), ("sep_conv_3x3", 0),
         ("avg_pool_3x3", 1), ("skip_connect", 0), ("avg_pool_3x3", 0), ("avg_pool_3x3", 0),
         ("sep_conv_3x3", 1), ("skip_connect", 1)],
        [2, 3, 4, 5, 6],
        [("sep_conv_5x5", 1), ("sep_conv_7x7", 0), ("max_pool_3x3", 1), ("sep_conv_7x7", 0),
         ("avg_pool_3x3", 1), ("sep_conv_5x5", 0), ("skip_connect", 3), ("avg_pool_3x3", 2),
         ("sep_conv_3x3", 2), ("max_pool_3x3", 1)],
        [4, 5, 6],
    ),
    "AmoebaNet": _cnn(
        "AmoebaNet",
        [("avg_pool_3x3", 0), ("max_pool_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 2),
         ("sep_conv_3x3", 0), ("avg_pool_3x3", 3), ("sep_conv_3x3", 1), ("skip_connect", 1),
         ("skip_connect", 0), ("avg_pool_3x3", 1)],
        [4, 5, 6],
        [("avg_pool_3x3", 0), ("sep_conv_3x3", 1), ("max_pool_3x3", 0), ("sep_conv_7x7", 2),
         ("sep_conv_7x7", 0), ("avg_pool_3x3", 1), ("max_pool_3x3", 0), ("max_pool_3x3", 1),
         ("conv_7x1_1x7", 0), ("sep_conv_3x3", 5)],
        [3, 4, 6],
    ),
    "PNAS": _cnn("PNAS", _PNAS_CELL, [2, 3, 4, 5, 6], _PNAS_CELL, [2, 3, 4, 5, 6]),
    "DARTS_V1_RNN": validate_recurrent_genotype(
        RecurrentGenotype(
            (("relu", 0), ("relu", 1), ("tanh", 2), ("relu", 3), ("relu", 4), ("identity", 1), ("relu", 5), ("relu", 1)),
            tuple(range(1, 9)),
            name="DARTS_V1_RNN",
        )
    ),
    "DARTS_V2_RNN": validate_recurrent_genotype(
        RecurrentGenotype(
            (("sigmoid", 0), ("relu", 1), ("relu", 1), ("identity", 1), ("tanh", 2), ("sigmoid", 5), ("tanh", 3), ("relu", 5)),
            tuple(range(1, 9)),
            name="DARTS_V2_RNN",
        )
    ),
    # ENAS's recurrent cell as the DARTS reference lists it (rnn/genotypes.py `ENAS`): 11 nodes, and the
    # output averages the nodes no other node reads. (The reference has no CNN ENAS genotype.)
    "ENAS_RNN": validate_recurrent_genotype(
        RecurrentGenotype(
            (("tanh", 0), ("tanh", 1), ("relu", 1), ("tanh", 3), ("tanh", 3), ("relu", 3), ("relu", 4), ("relu", 7),
             ("relu", 8), ("relu", 8), ("relu", 8)),
            (2, 5, 6, 9, 10, 11),
            name="ENAS_RNN",
        )
    ),
}  # fmt: skip

_ALIASES: dict[str, str] = {"DARTS": "DARTS_V2", "DARTS_RNN": "DARTS_V2_RNN"}

# Published or reference-convention costs per entry (torchvision-style metadata; tests recompute them).
PUBLISHED_COSTS: dict[str, dict[str, Any]] = {
    "DARTS_V2": {
        "cifar": {"params": 3_349_342, "params_with_aux": 3_825_768, "macs": 528.4e6},
        "imagenet": {"params": 4_718_752, "macs": 529.9e6},
    },
}


def register_genotype(name: str, genotype: Genotype, *, aliases: tuple[str, ...] = ()) -> None:
    """Add a genotype to the registry (for plug-ins and later search spaces)."""
    _GENOTYPES[name] = replace(genotype, name=name)
    for alias in aliases:
        _ALIASES[alias] = name


def list_genotypes(kind: str | None = None) -> list[str]:
    """Registered genotype names (not aliases), optionally only those of one kind."""
    return [n for n, g in _GENOTYPES.items() if kind is None or g.kind == kind]


def genotype_aliases() -> dict[str, str]:
    """Alias -> canonical name."""
    return dict(_ALIASES)


def get_genotype(name: str, expected_kind: str | None = None) -> Genotype:
    """The registered genotype called `name` (or an alias of it)."""
    canonical = _ALIASES.get(name, name)
    if canonical not in _GENOTYPES:
        known = list(_GENOTYPES) + list(_ALIASES)
        hint = nearest_name(name, known)
        did_you_mean = f"; did you mean '{hint}'?" if hint else ""
        raise GenotypeError(f"unknown genotype name '{name}'{did_you_mean} (known: {', '.join(known)})")
    genotype = _GENOTYPES[canonical]
    if expected_kind is not None and genotype.kind != expected_kind:
        raise GenotypeError(f"wrong genotype kind: '{name}' is a '{genotype.kind}' genotype, expected '{expected_kind}'")
    return genotype


def resolve_genotype(target: str | os.PathLike[str] | Genotype, expected_kind: str | None = None) -> Genotype:
    """A genotype from a registry name, a JSON file path, or a genotype object."""
    from nasdeploy.genotypes.serialize import load_genotype

    if isinstance(target, (CNNGenotype, RecurrentGenotype)) or hasattr(target, "kind"):
        if expected_kind is not None and target.kind != expected_kind:  # type: ignore[union-attr]
            raise GenotypeError(f"wrong genotype kind: expected '{expected_kind}', got '{target.kind}'")  # type: ignore[union-attr]
        return target  # type: ignore[return-value]
    text = os.fspath(target)
    if text.endswith(".json") or os.sep in text or Path(text).is_file():
        return load_genotype(text, expected_kind)
    return get_genotype(text, expected_kind)
