"""Static (deployable) networks built from genotypes; imports no search code."""

from nasdeploy.nets.darts_cnn import NetworkCIFAR, NetworkImageNet
from nasdeploy.nets.factory import NET_CONFIGS, NetConfig, build_network, get_net_config, list_networks, register_network

__all__ = [
    "NetworkCIFAR",
    "NetworkImageNet",
    "NetConfig",
    "NET_CONFIGS",
    "build_network",
    "get_net_config",
    "list_networks",
    "register_network",
]
