"""Static (deployable) networks built from genotypes; imports no search code."""

from nasdeploy.nets.darts_cnn import NetworkCIFAR, NetworkImageNet
from nasdeploy.nets.factory import NET_CONFIGS, NetConfig, build_network, get_net_config, list_networks, register_network
from nasdeploy.nets.autodeeplab import AutoDeepLabNet  # registers the 'segmentation' family

__all__ = [
    "NetworkCIFAR",
    "NetworkImageNet",
    "AutoDeepLabNet",
    "NetConfig",
    "NET_CONFIGS",
    "build_network",
    "get_net_config",
    "list_networks",
    "register_network",
]
