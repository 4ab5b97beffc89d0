"""The table of NodeMixer implementations and the choice among them (model.mixed_op, $NASDEPLOY_MIXED_OP).

The dependency goes one way: mixing (the interface and the reference) <- fused_mixer <- this table.
"""

from __future__ import annotations

import os
import warnings
from types import MappingProxyType
from typing import Callable, Mapping

from nasdeploy.errors import ConfigError
from nasdeploy.kernels import load_mixed_node
from nasdeploy.spaces.fused_mixer import FusionOptions, make_fused_mixer
from nasdeploy.spaces.mixing import NodeMixer, mix_node_reference

ENV_VAR = "NASDEPLOY_MIXED_OP"


def _reference(recompute_op_bodies: bool | None) -> NodeMixer:
    return mix_node_reference


def _fused(recompute_op_bodies: bool | None) -> NodeMixer:
    info = load_mixed_node()  # RuntimeError/OSError/ImportError when it cannot be built: 'auto' falls back
    return make_fused_mixer(FusionOptions(recompute_op_bodies=recompute_op_bodies),
                            devices=("cpu", "cuda") if info.cuda else ("cpu",))


# name -> factory(recompute_op_bodies); a factory raises ImportError/RuntimeError/OSError when its implementation is
# unavailable.
MIXERS: Mapping[str, Callable[[bool | None], NodeMixer]] = MappingProxyType({"reference": _reference, "fused": _fused})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def get_node_mixer(name: str | None = None, recompute_op_bodies: bool | None = False) -> tuple[str, NodeMixer]:
    """Resolve 'reference' | 'fused' | 'auto' (or None: $NASDEPLOY_MIXED_OP, default auto) to (name, mixer);
    recompute_op_bodies: conv candidates keep less for backward and recompute the rest (fused_mixer.FusionOptions;
    None: on CPU tensors only)."""
    mixers = MIXERS
    choice = (name or os.environ.get(ENV_VAR) or "auto").lower()
    if choice == "auto":
        if "fused" in mixers:
            try:
                return "fused", mixers["fused"](recompute_op_bodies)
            except (ImportError, RuntimeError, OSError) as exc:
                warnings.warn(f"fused mixed-op kernels unavailable ({_first_line(exc)}); using the reference path",
                              stacklevel=2)
        return "reference", mix_node_reference
    if choice not in mixers:
        raise ConfigError(f"unknown mixed-op implementation '{choice}'; choose one of: auto, {', '.join(mixers)}")
    try:
        return choice, mixers[choice](recompute_op_bodies)
    except (ImportError, RuntimeError, OSError) as exc:
        raise ConfigError(f"mixed-op implementation '{choice}' is unavailable: {_first_line(exc)}") from None
