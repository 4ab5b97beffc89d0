"""The profile adapter of the image spaces (darts_cnn, autodeeplab): several targets, one comparison report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from nasdeploy.errors import ConfigError
from nasdeploy.export.target import DeployTarget
from nasdeploy.profile.api import ProfileResult, profile_targets, report_dict
from nasdeploy.profile.report import render_report
from nasdeploy.profile.request import ProfileRequest


@dataclass(frozen=True)
class NetworkProfileReport:
    """The profiles of one `nasdeploy profile` call over image networks or .onnx files."""

    results: tuple[ProfileResult, ...]

    def text(self, breakdown: bool | None = None) -> str:
        """The printed report: comparison table, and per-stage / per-op tables (default: for one target)."""
        return render_report(list(self.results), breakdown=breakdown)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (format tag, environment once, one object per target)."""
        return report_dict(list(self.results))


def profile_network_targets(targets: Sequence[DeployTarget | str], request: ProfileRequest) -> NetworkProfileReport:
    """Params, MACs, mobile verdict and latency of each target (genotype, checkpoint or .onnx file) built as request.net.

    request.onnx_path (one target only) is the exported model the onnxruntime backends time instead of a
    temporary export; --seq-len and --threads belong to language models and are refused here.
    """
    if request.seq_len is not None or request.threads is not None:
        raise ConfigError("--seq-len and --threads apply to language-model targets only")
    if request.onnx_path is not None and len(targets) != 1:
        raise ConfigError("--onnx times one exported model: give one target with it")
    sizes = request.sizes
    results = profile_targets(list(targets), net=request.net, channels=sizes.channels, layers=sizes.layers,
                              num_classes=sizes.num_classes, input_size=request.input_size, latency=request.latency,
                              latency_config=request.latency_config, onnx_path=request.onnx_path)
    return NetworkProfileReport(tuple(results))
