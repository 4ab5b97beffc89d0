"""Which genotype a training run trains: a name, a file, a search run directory, or the run's own checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nasdeploy.errors import ConfigError
from nasdeploy.genotypes import Genotype, genotype_from_dict, genotype_to_dict, resolve_genotype
from nasdeploy.utils.checkpoint import load_checkpoint

GenotypeSource = Genotype | str | os.PathLike[str] | None


def resolve_train_genotype(source: GenotypeSource, out: Path, kind: str) -> Genotype:
    """A genotype object, registry name, JSON file or search run directory (its genotype.json) of `kind`;
    None: the genotype the run in `out` was training (from its checkpoint), to resume it."""
    if source is None:
        path = out / "checkpoint.pt"
        stored = load_checkpoint(path)["meta"].get("genotype") if path.is_file() else None
        if not stored:
            raise ConfigError("no genotype given: pass --genotype NAME|FILE|SEARCH_DIR or set it in the config")
        source = genotype_from_dict(stored)
    elif isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        path = genotype_file(source)
        if not path.is_file():
            raise ConfigError(f"{source} is a directory without genotype.json (is the search finished?)")
        source = path
    return resolve_genotype(source, expected_kind=kind)


def genotype_file(source: str | os.PathLike[str]) -> Path:
    """A genotype name or file as given; a search run directory stands for its genotype.json."""
    path = Path(source)
    return path / "genotype.json" if path.is_dir() else path


def genotype_fingerprint(genotype: Genotype) -> dict[str, Any]:
    """The genotype as the resume check compares it: everything but its name."""
    return {"genotype": {k: v for k, v in genotype_to_dict(genotype).items() if k != "name"}}
