"""What `nasdeploy export` and `nasdeploy profile` are pointed at: a genotype or a checkpoint, and its space.

A target is a registry name, a genotype JSON file, a genotype object, or a training checkpoint (.pt/.pth)
whose meta names its genotype. The genotype's kind picks the search space from the table of spaces, and
that entry names the export and profile adapters that handle it (nothing here branches on a space).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasdeploy.errors import CheckpointError, ConfigError, GenotypeError
from nasdeploy.genotypes import Genotype
from nasdeploy.spaces.table import SPACES, SearchSpace

CHECKPOINT_SUFFIXES = (".pt", ".pth")


@dataclass(frozen=True)
class DeployTarget:
    """A resolved target: its genotype, the checkpoint with its weights (if any) and the space it belongs to."""

    given: str  # the target as named (a genotype object: its name)
    genotype: Genotype
    checkpoint: str | None
    space: SearchSpace
    net: str | None = None  # the network family a checkpoint target was trained as (its meta["net"])


def is_checkpoint_file(target: Any) -> bool:
    """True for a path naming a checkpoint file (by its suffix)."""
    return isinstance(target, (str, os.PathLike)) and Path(target).suffix.lower() in CHECKPOINT_SUFFIXES


def space_of_genotype(kind: str) -> SearchSpace:
    """The table entry of the space whose genotypes are of `kind`."""
    for space in SPACES.values():
        if space.genotype_kind == kind:
            return space
    raise ConfigError(f"no search space has '{kind}' genotypes (known: {', '.join(SPACES)})")


def deploy_target(target: Any, checkpoint: str | os.PathLike[str] | None = None) -> DeployTarget:
    """Resolve a target (a DeployTarget is returned as it is); a checkpoint target needs no --checkpoint."""
    from nasdeploy.genotypes import genotype_from_dict, resolve_genotype

    if isinstance(target, DeployTarget):
        return target
    if hasattr(target, "kind"):
        genotype = resolve_genotype(target)
        return DeployTarget(genotype.name or "genotype object", genotype, _path(checkpoint), space_of_genotype(genotype.kind))
    if not is_checkpoint_file(target):
        genotype = resolve_genotype(target)
        return DeployTarget(os.fspath(target), genotype, _path(checkpoint), space_of_genotype(genotype.kind))
    if checkpoint is not None and Path(checkpoint) != Path(target):
        raise ConfigError(f"{target} is a checkpoint already; --checkpoint must not name another file")
    from nasdeploy.utils.checkpoint import load_checkpoint

    meta = load_checkpoint(target).get("meta") or {}
    if meta.get("genotype") is None:
        raise CheckpointError(f"checkpoint {target} names no genotype in its meta: give the genotype as the target "
                              "and this file as --checkpoint")
    try:
        genotype = genotype_from_dict(meta["genotype"])
    except Exception as exc:
        raise CheckpointError(f"checkpoint {target} has an unreadable genotype in its meta: {exc}") from None
    net = meta.get("net") if isinstance(meta.get("net"), str) else None
    return DeployTarget(os.fspath(target), genotype, os.fspath(target), space_of_genotype(genotype.kind), net)


def _path(checkpoint: str | os.PathLike[str] | None) -> str | None:
    return os.fspath(checkpoint) if checkpoint is not None else None


def network_for(target: DeployTarget, net: str | None, prefer: str) -> str:
    """The network family to build: `net` when given (its genotype kind must match), else the checkpoint's, else
    `prefer` when it builds this kind, else the first registered family that does."""
    from nasdeploy.nets import NET_CONFIGS, get_net_config

    kind = target.genotype.kind
    if net is not None:
        wanted = get_net_config(net).genotype_kind
        if wanted != kind:
            raise GenotypeError(f"wrong genotype kind: '{target.given}' is a '{kind}' genotype, expected '{wanted}'")
        return net
    if target.net is not None and target.net in NET_CONFIGS:
        return target.net
    families = [name for name, cfg in NET_CONFIGS.items() if cfg.genotype_kind == kind]
    if not families:
        raise ConfigError(f"no network family builds '{kind}' genotypes")
    return prefer if prefer in families else families[0]
