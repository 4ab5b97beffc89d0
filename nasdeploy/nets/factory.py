"""The network factory: one builder per network family, each with a default config export/profile read."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from torch import nn

from nasdeploy.errors import ConfigError
from nasdeploy.genotypes import CNNGenotype, Genotype, resolve_genotype
from nasdeploy.utils.limits import CellNetworkShape, check_network


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
    stem_stride: int = 1  # input pixels per pixel of the first cell's input
    reductions: int = 2  # cells (or levels) that halve H and W and double the channels

    @property
    def min_input_size(self) -> int:
        """The network's total stride: a smaller input leaves its last cells less than one pixel."""
        return self.stem_stride * 2**self.reductions

    def shape(self, input_hw: tuple[int, int] | None = None, *, nodes: int = 4, multiplier: int = 4,
              ops_per_edge: int = 1, levels: tuple[int, ...] | None = None) -> CellNetworkShape:
        """The numbers this network's memory follows (limits.check_network); input_hw defaults to the family's."""
        hw = tuple(input_hw) if input_hw is not None else self.input_size[1:]
        return CellNetworkShape(self.channels, self.layers, (int(hw[0]), int(hw[1])), nodes=nodes,
                                multiplier=multiplier, reductions=self.reductions, stem_stride=self.stem_stride,
                                num_classes=self.num_classes, ops_per_edge=ops_per_edge, levels=levels,
                                head_channels=int(self.extra.get("head_channels", 0)))


CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NET_CONFIGS: dict[str, NetConfig] = {
    "cifar": NetConfig("cifar", "cnn_cell", 36, 20, 10, (3, 32, 32), CIFAR_MEAN, CIFAR_STD),
    "imagenet": NetConfig("imagenet", "cnn_cell", 48, 14, 1000, (3, 224, 224), IMAGENET_MEAN, IMAGENET_STD,
                          stem_stride=8),
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
    input_size: tuple[int, int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the static network `net` from a genotype object, registry name or genotype file.

    Its sizes and memory estimate (parameters and one `input_size` image's activations; default: the family's
    input) are checked against the limits first. The returned module carries `default_cfg` (a NetConfig with
    the sizes actually used).
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
    sized = replace(cfg, channels=channels, layers=layers, num_classes=num_classes, extra=dict(cfg.extra))
    multiplier = kwargs.get("filter_multiplier")  # Auto-DeepLab's builder takes its channels so (and it wins)
    check_network_size(replace(sized, channels=multiplier) if isinstance(multiplier, int) else sized, resolved,
                       input_size)
    model = _BUILDERS[net](resolved, cfg, channels=channels, layers=layers, num_classes=num_classes, **kwargs)
    # A builder may attach a more precise config itself (e.g. depth taken from the genotype's path).
    if not isinstance(getattr(model, "default_cfg", None), NetConfig):
        model.default_cfg = sized
    return model


def check_network_size(cfg: NetConfig, genotype: Genotype, input_size: tuple[int, int] | None = None) -> None:
    """Channels, layers, input size and memory estimate of `cfg`'s network (its sizes) for `genotype`, before it
    is built or fed an `input_size` (H, W) image: a LimitError names the limit that is exceeded."""
    if isinstance(genotype, CNNGenotype):
        shape = cfg.shape(input_size, nodes=len(genotype.normal) // 2, multiplier=len(genotype.normal_concat))
    else:  # a cell of blocks on a path of levels (Auto-DeepLab): the path sets the depth and each layer's level
        path = tuple(getattr(genotype, "path", ()))
        blocks = int(getattr(genotype, "blocks", 4))
        shape = replace(cfg, layers=len(path) or cfg.layers).shape(input_size, nodes=blocks, multiplier=blocks,
                                                                   levels=path or None)
    check_network(f"the {cfg.name} network", shape)
