"""Building the fused kernels: shipped sources, a CUDA compile check without a GPU, `nasdeploy build-ext`."""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from nasdeploy.kernels import build

REPO = Path(__file__).resolve().parents[2]


def test_sources_ship_inside_the_package():
    files = importlib.resources.files(build.SOURCE_PACKAGE)
    for name in build.CPU_SOURCES + build.CUDA_SOURCES + build.HEADERS:
        assert files.joinpath(name).is_file(), name
        assert (build.source_dir() / name).is_file()


@pytest.mark.skipif(build.cuda_home() is None, reason="nvcc / CUDA headers not found (set CUDA_HOME)")
def test_cuda_sources_compile_for_sm90(tmp_path):
    """A broken .cu (or CUDA glue) fails here, on machines without a GPU."""
    home = build.cuda_home()
    src = build.source_dir()
    nvcc = [str(home / "bin" / "nvcc"), "-c", "-O3", "-std=c++17", "-arch=sm_90", f"-I{src}",
            str(src / "mixed_node_cuda.cu"), "-o", str(tmp_path / "mixed_node_cuda.o")]
    done = subprocess.run(nvcc, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]

    # The torch glue with its CUDA half switched on: syntax only (no GPU, no linking needed).
    from torch.utils import cpp_extension

    includes = [f"-I{p}" for p in cpp_extension.include_paths(device_type="cuda")] + [f"-I{home / 'include'}"]
    gxx = [os.environ.get("CXX", "c++"), "-std=c++20", "-fsyntax-only", "-DNASDEPLOY_WITH_CUDA", f"-I{src}",
           *includes, str(src / "mixed_node_ops.cpp")]
    done = subprocess.run(gxx, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.mark.slow
def test_wheel_contains_the_sources(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(REPO)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    (wheel,) = tmp_path.glob("nasdeploy-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in build.CPU_SOURCES + build.CUDA_SOURCES + build.HEADERS:
        assert f"nasdeploy/kernels/csrc/{name}" in names


@pytest.mark.skipif(not build.compiler_available(), reason="no C++ compiler or ninja on PATH")
def test_cli_build_ext_reports_what_it_built(tmp_path, capsys):
    from nasdeploy.cli.main import main

    report = tmp_path / "build.json"
    main(["build-ext", "--no-cuda", "--json", str(report)])
    out = capsys.readouterr().out
    assert "built nasdeploy_mixed_node_cpu" in out
    assert "CPU kernels:  yes" in out
    assert "CUDA kernels: not built" in out
    data = json.loads(report.read_text())
    assert data["cuda"] is False and data["devices"] == ["cpu"] and Path(data["library"]).is_file()


def test_cli_build_ext_without_cuda_toolkit_is_one_line_error(monkeypatch, capsys):
    from nasdeploy.cli.main import main

    monkeypatch.setattr(build, "cuda_toolkit_available", lambda: False)
    monkeypatch.setattr(build, "compiler_available", lambda: True)
    with pytest.raises(SystemExit) as exc:
        main(["build-ext", "--cuda"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --cuda needs a CUDA toolkit") and "\n" not in err


def test_cli_build_ext_without_compiler_is_one_line_error(monkeypatch, capsys):
    from nasdeploy.cli.main import main

    monkeypatch.setattr(build, "compiler_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        main(["build-ext"])
    assert exc.value.code == 2
    assert "no C++ compiler" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("ninja") is None, reason="ninja not on PATH")
def test_cache_directory_is_versioned_by_python_and_torch(monkeypatch, tmp_path):
    import torch

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    root = build.extensions_root()
    assert root.parent == tmp_path
    assert f"py{sys.version_info.major}{sys.version_info.minor}" in root.name
    assert torch.__version__.split("+")[0] in root.name


@pytest.mark.slow
@pytest.mark.skipif(build.cuda_home() is None or not build.compiler_available(), reason="no CUDA toolkit / compiler")
def test_full_cuda_variant_builds_and_loads_without_a_gpu(tmp_path):
    """The exact JIT build a GPU machine runs (sm_90), in a fresh process; about a minute on 2 cores."""
    report = tmp_path / "build.json"
    done = subprocess.run([sys.executable, "-m", "nasdeploy", "build-ext", "--cuda", "--arch", "9.0",
                           "--json", str(report)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    data = json.loads(report.read_text())
    assert data["cuda"] is True and data["archs"] == ["9.0"] and data["devices"] == ["cpu", "cuda"]


def test_a_first_use_compile_is_announced_on_a_terminal_only(monkeypatch, tmp_path, capsys):
    """The first-use compile takes minutes: a terminal user is told what the wait is; captured stderr stays clean."""
    from nasdeploy.kernels import build

    monkeypatch.setattr(build.sys.stderr, "isatty", lambda: True, raising=False)
    assert build.announce_first_build("nasdeploy_mixed_node_cpu", tmp_path)
    err = capsys.readouterr().err
    assert err.startswith("[kernels] compiling the fused mixed-op kernels on first use (about ") and str(tmp_path) in err
    (tmp_path / "nasdeploy_mixed_node_cpu.so").write_bytes(b"")  # cached: nothing to say
    assert not build.announce_first_build("nasdeploy_mixed_node_cpu", tmp_path)
    monkeypatch.setattr(build.sys.stderr, "isatty", lambda: False, raising=False)
    assert not build.announce_first_build("nasdeploy_mixed_node_x", tmp_path)
    assert capsys.readouterr().err == ""
