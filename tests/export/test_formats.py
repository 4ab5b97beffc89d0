"""The table of export formats: one list of formats and INT8 methods, which steps a request runs, in what order."""

from __future__ import annotations

import inspect

import pytest

from nasdeploy.errors import ConfigError
from nasdeploy.export.formats import (
    FORMATS,
    INT8_FLOAT_FORMAT,
    INT8_METHODS,
    STEPS,
    check_formats,
    check_int8_methods,
    needs_onnx,
    planned_steps,
)
from nasdeploy.spaces.table import resolve


@pytest.mark.parametrize("formats, int8, expected", [
    (("onnx",), (), ("onnx",)),
    (("executorch",), (), ("executorch",)),  # no ONNX is written for an ExecuTorch-only export
    (("tensorrt",), (), ("onnx", "tensorrt")),
    (("triton", "onnx"), (), ("onnx", "triton")),
    (("executorch",), ("ort",), ("onnx", "executorch", "int8")),  # INT8 ort quantizes model.onnx
    (("onnx",), ("executorch",), ("onnx", "executorch", "int8")),  # PT2E is scored against the float .pte
    (("tensorrt", "triton", "executorch", "onnx"), ("ort", "executorch"),
     ("onnx", "executorch", "int8", "tensorrt", "triton")),
])
def test_planned_steps(formats, int8, expected):
    assert planned_steps(formats, int8) == expected
    assert needs_onnx(formats, int8) is ("onnx" in expected)


def test_every_step_resolves_and_comes_after_what_it_needs():
    order = list(STEPS)
    for name, step in STEPS.items():
        fn = resolve(step.run)
        assert list(inspect.signature(fn).parameters) == ["ctx"], name
        assert all(order.index(need) < order.index(name) for need in step.needs), name
    assert FORMATS == ("onnx", "executorch", "tensorrt", "triton") and "int8" not in FORMATS
    assert set(INT8_FLOAT_FORMAT.values()) <= set(FORMATS) and INT8_METHODS == ("ort", "executorch")
    from nasdeploy.export.formats.int8 import _METHODS

    assert tuple(_METHODS) == INT8_METHODS  # every INT8 method has a handler, and no other


def test_names_are_checked_once_for_every_caller():
    assert check_formats(["onnx", "triton", "onnx"]) == ("onnx", "triton")
    assert check_int8_methods(["executorch", "ort", "executorch"]) == ("executorch", "ort")
    with pytest.raises(ConfigError, match=r"unknown export format\(s\) \['tflite'\]; choose from: onnx, executorch"):
        check_formats(["onnx", "tflite"])
    with pytest.raises(ConfigError, match="unknown export format"):
        check_formats([])
    with pytest.raises(ConfigError, match=r"unknown INT8 method\(s\) \['fp8'\]; choose from: ort, executorch"):
        check_int8_methods(["fp8"])
