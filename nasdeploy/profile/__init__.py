"""Profiler: parameters, MACs (stated convention), activation memory and latency per runtime."""

from nasdeploy.profile.api import (
    ProfileResult,
    profile_model,
    profile_onnx,
    profile_target,
    profile_targets,
    report_dict,
    write_report_json,
)
from nasdeploy.profile.complexity import MAC_CONVENTION, Complexity, count_params, model_complexity
from nasdeploy.profile.latency import BACKEND_GROUPS, BACKENDS, measure_latency, parse_backends, time_model_file
from nasdeploy.profile.mobile import MOBILE_MAC_LIMIT, MobileVerdict, mobile_verdict
from nasdeploy.profile.protocol import LatencyConfig, LatencyResult

__all__ = [
    "ProfileResult",
    "profile_model",
    "profile_onnx",
    "profile_target",
    "profile_targets",
    "report_dict",
    "write_report_json",
    "Complexity",
    "MAC_CONVENTION",
    "count_params",
    "model_complexity",
    "LatencyConfig",
    "LatencyResult",
    "BACKENDS",
    "BACKEND_GROUPS",
    "measure_latency",
    "parse_backends",
    "time_model_file",
    "MobileVerdict",
    "MOBILE_MAC_LIMIT",
    "mobile_verdict",
]
