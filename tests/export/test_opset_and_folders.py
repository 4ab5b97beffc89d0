"""Silent wrong results refused (ONNX opset); exported folders readable and naming themselves."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from torch import nn

from helpers import one_error_line
from nasdeploy.errors import ConfigError, ExportError
from nasdeploy.export import onnx as onnx_export
from nasdeploy.export.api import export_model
from nasdeploy.export.options import ExportOptions


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))


def test_supported_opsets_end_at_the_installed_onnx():
    import onnx

    opsets = onnx_export.supported_opsets()
    assert opsets.start == onnx_export.MIN_OPSET == 18
    assert opsets.stop - 1 == onnx.defs.onnx_opset_version()


@pytest.mark.parametrize("opset", [onnx_export.MIN_OPSET - 1, None])
def test_opset_outside_the_range_is_refused_before_export(tmp_path, opset):
    opset = onnx_export.supported_opsets().stop if opset is None else opset
    with pytest.raises(ConfigError, match=rf"opset.*{opset}") as err:
        onnx_export.export_onnx(_tiny(), tmp_path / "m.onnx", input_size=(3, 8, 8), opset=opset)
    assert "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())


def test_cli_opset_99_exits_2_with_nothing_written(tmp_path, capsys):
    out = tmp_path / "exp"
    line = one_error_line(capsys, ["export", "DARTS_V2", "--opset", "99", "--out", str(out)])
    assert line.startswith("error: opset 99 is newer than the installed onnx supports (opsets 18..")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_silent_fallback_of_the_exporter_is_caught(tmp_path, monkeypatch):
    # Pretend onnx supported opset 40: the exporter's conversion then fails and it writes its default opset.
    monkeypatch.setattr(onnx_export, "supported_opsets", lambda: range(18, 41))
    with pytest.raises(ExportError, match=r"the exporter wrote opset \d+ instead of the requested 40"):
        onnx_export.export_onnx(_tiny(), tmp_path / "m.onnx", input_size=(3, 8, 8), opset=40)
    assert not any(tmp_path.iterdir())


def test_requested_supported_opset_is_what_is_written(tmp_path):
    import onnx

    path = onnx_export.export_onnx(_tiny(), tmp_path / "m.onnx", input_size=(3, 8, 8), opset=20)
    assert [o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")] == [20]


def test_export_folder_is_readable_by_others_and_names_itself(tmp_path):
    old = os.umask(0o022)
    try:
        result = export_model(_tiny(), tmp_path / "exp", options=ExportOptions(input_size=(8, 8), seed=0))
    finally:
        os.umask(old)
    out = tmp_path / "exp"
    assert result.out_dir == out
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for path in out.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]  # no staging folder left
    report = json.loads((out / "export.json").read_text())
    parity = json.loads((out / "parity_onnx.json").read_text())
    assert report["out_dir"] == "."  # paths in a report are relative to it
    assert report["parity"]["onnx"]["model_path"] == parity["model_path"] == "model.onnx"
    for text in ((out / "export.json").read_text(), (out / "parity_onnx.json").read_text()):
        assert ".partial-" not in text


def test_permission_reset_keeps_the_trtexec_script_executable(tmp_path, monkeypatch):
    """Data files 0644, folders and trtexec.sh 0755: the staged folder's permission reset must keep the script runnable."""
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # no TensorRT: the export writes trtexec.sh instead
    old = os.umask(0o022)
    try:
        result = export_model(_tiny(), tmp_path / "exp", formats=("tensorrt", "triton"),
                              options=ExportOptions(input_size=(8, 8), seed=0), name="tiny")
    finally:
        os.umask(old)
    out = tmp_path / "exp"
    assert result.files["trtexec_script"] == "trtexec.sh" and "tensorrt" in result.skipped
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    assert modes.pop("trtexec.sh") == 0o755
    for name, mode in modes.items():
        assert mode == (0o755 if (out / name).is_dir() else 0o644), (name, oct(mode))
    assert os.access(out / "trtexec.sh", os.X_OK) and "triton/tiny/1/model.onnx" in modes
