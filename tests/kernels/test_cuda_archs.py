"""CUDA arch names for the kernel build: typos are refused before anything compiles."""

from __future__ import annotations

import pytest

from helpers import one_error_line
from nasdeploy.errors import ConfigError
from nasdeploy.kernels.build import validate_cuda_arch


@pytest.mark.parametrize("arch", ["8.0", "8.6", "8.6+PTX", "9.0", "9.0a", "10.0", "10.0a", "12.0", "12.1a+PTX"])
def test_valid_cuda_archs(arch):
    assert validate_cuda_arch(arch) == arch


@pytest.mark.parametrize("arch, message", [
    ("abc", "is not a compute capability"), ("90", "is not a compute capability"), ("sm_90", "is not a compute"),
    ("9", "is not a compute"), ("9.0b", "is not a compute"), ("9.00", "is not a compute"), ("", "is not a compute"),
    ("8.0a", "variants exist from 9.0 on"), ("3.5", "older than"), ("9.0;8.0", "is not a compute"),
])
def test_invalid_cuda_archs(arch, message):
    with pytest.raises(ConfigError, match=message):
        validate_cuda_arch(arch)


def test_cli_build_ext_refuses_bad_arch_before_compiling(capsys):
    assert one_error_line(capsys, ["build-ext", "--arch", "abc"]) == \
        "error: CUDA arch 'abc' is not a compute capability like 8.0, 8.6+PTX, 9.0a or 10.0"
    assert one_error_line(capsys, ["build-ext", "--no-cuda", "--arch", "9.0"]) == \
        "error: --arch names CUDA targets but --no-cuda builds the CPU kernels only"
