"""The network factory: one builder per network family, each with a default config export/profile read."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from nasdeploy.errors import ConfigError
from nasdeploy.genotypes import CNNGenotype, Genotype, resolve_genotype


@dataclass(frozen=True)
class NetConfig:
    """Defaults of one network family: sizes, input shape and normalisation."""

    name: str
    genotype_kind: str
    channels: int
    layers: int
    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    extra: dict[str, Any] = field(default_factory=dict)


CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NET_CONFIGS: dict[str, NetConfig] = {
    "cifar": NetConfig("cifar", "cnn_cell", 36, 20, 10, (3, 32, 32), CIFAR_MEAN, CIFAR_STD),
    "imagenet": NetConfig("imagenet", "cnn_cell", 48, 14, 1000, (3, 224, 224), IMAGENET_MEAN, IMAGENET_STD),
}


def _build_cifar(genotype: CNNGenotype, cfg: NetConfig, **kwargs: Any) -> nn.Module:
    from nasdeploy.nets.darts_cnn import NetworkCIFAR

    return NetworkCIFAR(genotype, **kwargs)


def _build_imagenet(genotype: CNNGenotype, cfg: NetConfig, **kwargs: Any) -> nn.Module:
    from nasdeploy.nets.darts_cnn import NetworkImageNet

    return NetworkImageNet(genotype, **kwargs)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {"cifar": _build_cifar, "imagenet": _build_imagenet}


def register_network(cfg: NetConfig, builder: Callable[..., nn.Module]) -> None:
    """Register a network family (builder(genotype, cfg, channels=, layers=, num_classes=, **kw))."""
    NET_CONFIGS[cfg.name] = cfg
    _BUILDERS[cfg.name] = builder


def list_networks() -> list[str]:
    """Names of the registered network families."""
    return list(NET_CONFIGS)


def get_net_config(net: str) -> NetConfig:
    """The default config of network family `net`."""
    if net not in NET_CONFIGS:
        raise ConfigError(f"unknown network '{net}'; choose one of: {', '.join(NET_CONFIGS)}")
    return NET_CONFIGS[net]


def build_network(
    genotype: Genotype | str | os.PathLike[str],
    net: str = "cifar",
    *,
    channels: int | None = None,
    layers: int | None = None,
    num_classes: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the static network `net` from a genotype object, registry name or genotype file.

    The returned module carries `default_cfg` (a NetConfig with the sizes actually used).
    """
    cfg = get_net_config(net)
    resolved = resolve_genotype(genotype, expected_kind=cfg.genotype_kind)
    channels = cfg.channels if channels is None else channels
    layers = cfg.layers if layers is None else layers
    num_classes = cfg.num_classes if num_classes is None else num_classes
    for key, value in (("channels", channels), ("layers", layers), ("num_classes", num_classes)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    if cfg.genotype_kind == "cnn_cell" and channels % 2 != 0:
        raise ConfigError(f"channels must be even (FactorizedReduce halves them), got {channels}")
    model = _BUILDERS[net](resolved, cfg, channels=channels, layers=layers, num_classes=num_classes, **kwargs)
    # A builder may attach a more precise config itself (e.g. depth taken from the genotype's path).
    if not isinstance(getattr(model, "default_cfg", None), NetConfig):
        model.default_cfg = NetConfig(
            cfg.name, cfg.genotype_kind, channels, layers, num_classes, cfg.input_size, cfg.mean, cfg.std, dict(cfg.extra)
        )
    return model
