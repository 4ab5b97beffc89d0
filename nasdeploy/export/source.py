"""The model an export starts from: a genotype's network, with the weights and sizes of a checkpoint when given."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from nasdeploy.errors import CheckpointError
from nasdeploy.genotypes import Genotype


@dataclass(frozen=True)
class ExportSource:
    """A model ready to export and where it came from."""

    model: nn.Module
    genotype_name: str | None
    net: str
    checkpoint: str | None
    net_kwargs: dict[str, Any]
    dataset: dict[str, Any] | None = None  # the checkpoint's meta["dataset"] (name, classes, mean, std), if any


def same_cells(a: Genotype, b: Genotype) -> bool:
    """Whether two genotypes describe the same architecture (their names aside)."""
    from nasdeploy.genotypes import genotype_to_dict

    da, db = genotype_to_dict(a), genotype_to_dict(b)
    da.pop("name", None)
    db.pop("name", None)
    return da == db


def check_checkpoint_genotype(meta: dict[str, Any], genotype: Genotype, where: str) -> None:
    """CheckpointError unless the genotype a checkpoint was trained for (its meta, if it names one) is `genotype`."""
    from nasdeploy.genotypes import genotype_from_dict

    if meta.get("genotype") is None:
        return
    try:
        trained = genotype_from_dict(meta["genotype"], expected_kind=genotype.kind)
    except Exception as exc:
        raise CheckpointError(f"{where} has an unreadable genotype in its meta: {exc}") from None
    if not same_cells(trained, genotype):
        label = trained.name or "a different genotype"
        raise CheckpointError(f"{where} was trained for {label}, which differs from the target '{genotype.name or 'genotype'}'")


def _strip_module_prefix(state: dict[str, Any]) -> dict[str, Any]:
    # nn.DataParallel checkpoints (the reference ImageNet script) prefix every key with "module.".
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _saved_net_kwargs(meta: dict[str, Any]) -> dict[str, Any]:
    """The network sizes a training run stored in its checkpoint meta, in build_network's names."""
    saved = dict(meta.get("net_kwargs") or {})
    if "filter_multiplier" in saved:  # Auto-DeepLab's F is the family's `channels`
        saved["channels"] = saved.pop("filter_multiplier")
    if "num_classes" in meta and "num_classes" not in saved:
        saved["num_classes"] = meta["num_classes"]
    return saved


def build_export_model(
    target: Any,
    *,
    net: str = "cifar",
    checkpoint: str | os.PathLike[str] | None = None,
    channels: int | None = None,
    layers: int | None = None,
    num_classes: int | None = None,
    input_size: tuple[int, int] | None = None,
    seed: int = 0,
) -> ExportSource:
    """Build the network for `target` (registry name, genotype file or object) and load checkpoint weights.

    A nasdeploy checkpoint's meta (genotype, net, net_kwargs) must agree with the target and the given
    sizes; a plain state_dict loads into a network of the given (or default) sizes. The sizes (a checkpoint's
    included) and the memory of one `input_size` (H, W) image are checked against the limits before building.
    The network is built under `seed` (torch's RNG forked, the caller's left as it was), so untrained weights repeat.
    """
    import torch

    from nasdeploy.genotypes import resolve_genotype
    from nasdeploy.nets import build_network, get_net_config
    from nasdeploy.utils.checkpoint import load_checkpoint, load_weights_into

    cfg = get_net_config(net)
    genotype = resolve_genotype(target, expected_kind=cfg.genotype_kind)
    requested = {"channels": channels, "layers": layers, "num_classes": num_classes}
    kwargs: dict[str, Any] = {k: v for k, v in requested.items() if v is not None}
    ckpt = None
    if checkpoint is not None:
        ckpt = load_checkpoint(checkpoint)
        meta = ckpt.get("meta") or {}
        where = f"checkpoint {checkpoint}"
        if meta.get("net") not in (None, net):
            raise CheckpointError(f"{where} is for net '{meta['net']}', not '{net}'")
        check_checkpoint_genotype(meta, genotype, where)
        saved = _saved_net_kwargs(meta)
        for key, value in saved.items():
            if key in kwargs and kwargs[key] != value:
                raise CheckpointError(f"{where} has {key}={value}, but {key}={kwargs[key]} was requested")
            kwargs[key] = value
        ckpt["model"] = _strip_module_prefix(ckpt["model"])
        if cfg.genotype_kind == "cnn_cell":
            has_aux = any(k.startswith("auxiliary_head.") for k in ckpt["model"])
            kwargs["auxiliary"] = bool(saved.get("auxiliary", has_aux))
    elif cfg.genotype_kind == "cnn_cell":
        kwargs["auxiliary"] = False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_network(genotype, net, input_size=input_size, **kwargs)
    if ckpt is not None:
        load_weights_into(model, ckpt, source=f"checkpoint {checkpoint}")
    model.eval()
    dataset = (ckpt.get("meta") or {}).get("dataset") if ckpt is not None else None
    return ExportSource(model, genotype.name, net, str(checkpoint) if checkpoint else None, kwargs,
                        dataset=dataset if isinstance(dataset, dict) else None)


def default_name(genotype_name: str | None, net: str) -> str:
    """The export's model name when none is given: <genotype>_<net>, lower case, file-name safe."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", genotype_name or "genotype").strip("_") or "model"
    return f"{base}_{net}".lower()
