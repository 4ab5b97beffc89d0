"""export_target / `nasdeploy export`: checkpoints, output directory, one-line errors, missing TensorRT."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from google.protobuf import text_format
from torch import nn
from tritonclient.grpc import model_config_pb2

from nasdeploy.cli.main import cli, main
from nasdeploy.errors import CheckpointError, ConfigError
from nasdeploy.export.api import export_model, export_target
from nasdeploy.export.options import ExportOptions, TensorRTOptions
from nasdeploy.export.parity import ToleranceError
from nasdeploy.export.request import ExportRequest
from nasdeploy.export.source import build_export_model
from nasdeploy.genotypes import genotype_to_dict, get_genotype
from nasdeploy.nets import build_network
from nasdeploy.utils.checkpoint import save_checkpoint
from nasdeploy.utils.ownership import mark_folder

NET_KWARGS = {"channels": 8, "layers": 3, "num_classes": 5, "auxiliary": True}


def _trained_checkpoint(path, genotype="DARTS_V2"):
    """A `nasdeploy train`-format checkpoint after a few SGD steps (weights and BN stats moved from init)."""
    torch.manual_seed(1)
    model = build_network(genotype, "cifar", drop_path_prob=0.2, **NET_KWARGS)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(3):
        x, y = torch.randn(16, 3, 32, 32) * 2 + 0.5, torch.randint(0, 5, (16,))
        logits, aux = model(x)
        loss = nn.functional.cross_entropy(logits, y) + 0.4 * nn.functional.cross_entropy(aux, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    meta = {"genotype": genotype_to_dict(get_genotype(genotype)), "net": "cifar", "net_kwargs": dict(NET_KWARGS)}
    save_checkpoint(path, model.state_dict(), kind="train", meta=meta, epoch=3)
    return model.eval()


def _run_cli(args):
    """Run `nasdeploy ...` in-process like the console script (one-line errors, exit code 2)."""
    try:
        main(args)
    except SystemExit as exc:
        return exc.code
    return 0


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory):
    """One CLI export of a trained checkpoint to ONNX + Triton + TensorRT (TensorRT is absent here)."""
    root = tmp_path_factory.mktemp("cli")
    trained = _trained_checkpoint(root / "ckpt.pt")
    out = root / "out"
    runner = CliRunner()
    result = runner.invoke(cli, ["export", "DARTS_V2", "--net", "cifar", "--checkpoint", str(root / "ckpt.pt"),
                                 "--format", "onnx", "--format", "triton", "--format", "tensorrt", "--out", str(out),
                                 "--max-batch", "16", "--seed", "7"], standalone_mode=False, catch_exceptions=True)
    return trained, out, result


def test_checkpoint_roundtrip_same_predictions(cli_export):
    trained, out, _ = cli_export
    assert trained.default_cfg.channels == 8  # sizes came from the checkpoint's net_kwargs, not the defaults
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(64, 3, 32, 32) * 2 + 0.5
    with torch.no_grad():
        expected = trained(x).numpy()
    got = session.run(None, {"input": x.numpy()})[0]
    assert (got.argmax(1) == expected.argmax(1)).all()
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)
    fresh = build_network("DARTS_V2", "cifar", channels=8, layers=3, num_classes=5).eval()
    with torch.no_grad():
        assert not np.allclose(fresh(x).numpy(), expected, atol=1e-2), "the checkpoint weights were not used"


def test_report_files(cli_export):
    _, out, result = cli_export
    report = json.loads((out / "export.json").read_text())
    parity = json.loads((out / "parity_onnx.json").read_text())
    assert parity["passed"] and parity["rtol"] == 1e-3 and parity["atol"] == 1e-5 and parity["seed"] == 7
    assert report["parity"]["onnx"]["max_abs_err"] == parity["max_abs_err"]
    assert report["source"]["checkpoint"].endswith("ckpt.pt") and report["source"]["net_kwargs"]["channels"] == 8
    assert report["onnx"]["dynamic_axes"] == {"batch": True, "height": True, "width": True}
    assert "max abs err" in result.output and "PASS" in result.output  # the table is printed too


def test_triton_repository_parses_with_tritons_schema(cli_export):
    _, out, _ = cli_export
    text = (out / "triton" / "darts_v2_cifar" / "config.pbtxt").read_text()
    cfg = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert cfg.name == "darts_v2_cifar" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 16
    assert (cfg.input[0].name, list(cfg.input[0].dims)) == ("input", [3, -1, -1])
    assert (cfg.output[0].name, list(cfg.output[0].dims)) == ("logits", [5])
    assert cfg.input[0].data_type == model_config_pb2.TYPE_FP32
    assert not list(cfg.dynamic_batching.preferred_batch_size)
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert list(cfg.model_warmup[0].inputs["input"].dims) == [3, 32, 32]
    assert cfg.output[0].label_filename == "labels.txt"
    repo = out / "triton"
    assert (repo / "darts_v2_cifar" / "1" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    # Triton's repository root holds only model folders; the README lives one level up.
    # (and nasdeploy's ownership mark, a file: Triton loads every subfolder as a model and ignores files)
    assert sorted(p.name for p in repo.iterdir()) == [".nasdeploy", "darts_v2_cifar", "darts_v2_cifar_trt"]
    assert (repo / ".nasdeploy").is_file()
    assert (out / "TRITON_README.md").is_file()
    assert len((repo / "darts_v2_cifar" / "labels.txt").read_text().splitlines()) == 5
    # The TensorRT model's config is written even though only trtexec.sh could be produced; the script
    # builds the plan where Triton looks for it.
    trt = text_format.Parse((repo / "darts_v2_cifar_trt" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert trt.platform == "tensorrt_plan" and (repo / "darts_v2_cifar_trt" / "1").is_dir()
    if (out / "trtexec.sh").exists():
        assert "--saveEngine=triton/darts_v2_cifar_trt/1/model.plan" in (out / "trtexec.sh").read_text()
    # Readable permissions (0755 / 0644 under the usual umask 022), not mkdtemp's 0700; the script stays executable.
    umask = os.umask(0)
    os.umask(umask)
    for path in [out, *out.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        executable = path.is_dir() or path.name == "trtexec.sh"
        assert mode == (0o777 if executable else 0o666) & ~umask, (path, oct(mode))


def test_missing_tensorrt_one_line_and_trtexec_script(cli_export):
    _, out, result = cli_export
    if _has_tensorrt():
        pytest.skip("TensorRT is installed here: the fallback path is covered by test_cli_missing_tensorrt_exit_code")
    assert isinstance(result.exception, Exception) and "tensorrt is not importable" in str(result.exception)
    assert "\n" not in str(result.exception)
    script = (out / "trtexec.sh").read_text()
    assert "--onnx=model.onnx" in script and "--minShapes=input:1x3x32x32" in script
    assert "--maxShapes=input:16x3x32x32" in script and "--timingCacheFile=timing.cache" in script
    assert not (out / "model.plan").exists() and not (out / "triton" / "darts_v2_cifar_trt" / "1" / "model.plan").exists()


def _has_tensorrt():
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


def test_cli_missing_tensorrt_exit_code(tmp_path, capsys, monkeypatch):
    # Exit code and stderr of the real entry point, on the cheapest export there is.
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    code = _run_cli(["export", "DARTS_V2", "--net", "cifar", "--channels", "4", "--layers", "3", "--static",
                     "--format", "tensorrt", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: TensorRT engine not built") and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        ".nasdeploy", "export.json", "model.onnx", "parity_onnx.json", "trtexec.sh"]


@pytest.mark.parametrize("args, message", [
    (["NOPE"], "unknown genotype name 'NOPE'"),
    (["DARTS_V2", "--net", "mobile"], "unknown network 'mobile'"),
    (["DARTS_V2", "--opset", "12"], "opset must be an integer >= 18"),
    (["DARTS_V2", "--input-size", "3x"], "--input-size must be"),
    (["DARTS_V2", "--checkpoint", "missing.pt"], "checkpoint not found"),
])
def test_cli_bad_input_one_line_no_output(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code = _run_cli(["export", *args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert list(tmp_path.iterdir()) == []  # no output directory, no partial staging folder


def test_cli_wrong_checkpoint_one_line_no_output(tmp_path, capsys):
    _trained_checkpoint(tmp_path / "darts.pt")
    (tmp_path / "runs").mkdir()
    code = _run_cli(["export", "NASNet", "--checkpoint", str(tmp_path / "darts.pt"), "--out", str(tmp_path / "runs" / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "trained for DARTS_V2, which differs from the target 'NASNet'" in err
    assert list((tmp_path / "runs").iterdir()) == []


def test_wrong_checkpoints(tmp_path):
    _trained_checkpoint(tmp_path / "darts.pt")
    with pytest.raises(CheckpointError, match="trained for DARTS_V2, which differs from the target 'NASNet'"):
        build_export_model("NASNet", net="cifar", checkpoint=tmp_path / "darts.pt")
    with pytest.raises(CheckpointError, match="is for net 'cifar', not 'imagenet'"):
        build_export_model("DARTS_V2", net="imagenet", checkpoint=tmp_path / "darts.pt")
    with pytest.raises(CheckpointError, match="has channels=8, but channels=16 was requested"):
        build_export_model("DARTS_V2", net="cifar", checkpoint=tmp_path / "darts.pt", channels=16)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        build_export_model("DARTS_V2", checkpoint=tmp_path / "junk.pt")
    plain = build_network("DARTS_V2", "cifar", channels=8, layers=3, num_classes=5).state_dict()
    torch.save(plain, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="does not fit the model"):
        build_export_model("DARTS_V2", checkpoint=tmp_path / "plain.pt")  # default sizes: 36 channels, 20 layers


def test_reference_state_dict_with_dataparallel_prefix(tmp_path):
    # The reference ImageNet script saved nn.DataParallel state_dicts ("module." keys) with the aux head.
    ref = build_network("DARTS_V2", "imagenet", channels=8, layers=3, num_classes=5, auxiliary=True)
    torch.save({f"module.{k}": v for k, v in ref.state_dict().items()}, tmp_path / "ref.pt")
    src = build_export_model("DARTS_V2", net="imagenet", checkpoint=tmp_path / "ref.pt", channels=8, layers=3, num_classes=5)
    assert src.net_kwargs["auxiliary"] is True
    assert all(torch.equal(a, b) for a, b in zip(src.model.state_dict().values(), ref.state_dict().values()))


class _ExportsDifferently(nn.Module):
    """Adds 1 only while being exported: its ONNX model cannot match PyTorch."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        return y + 1 if torch.compiler.is_compiling() else y


def test_failed_parity_fails_and_leaves_nothing(tmp_path):
    messages = []
    with pytest.raises(ToleranceError, match="parity failed: max abs err"):
        export_model(_ExportsDifferently(), tmp_path / "out", options=ExportOptions(input_size=(8, 8)), progress=messages.append)
    assert list(tmp_path.iterdir()) == []
    assert any("FAIL" in m for m in messages)  # the failing table was shown before the error


def test_existing_output_directory(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    for overwrite in (False, True):  # a folder nasdeploy did not make is never replaced
        with pytest.raises(ConfigError, match="did not make"):
            export_target(ExportRequest("DARTS_V2", out_dir=tmp_path / "out", options=ExportOptions(overwrite=overwrite)))
    mark_folder(tmp_path / "exported", "export")
    with pytest.raises(ConfigError, match="already exists"):  # one it made, only with overwrite
        export_target(ExportRequest("DARTS_V2", out_dir=tmp_path / "exported"))
    with pytest.raises(ConfigError, match="unknown export format"):
        export_target(ExportRequest("DARTS_V2", formats=("tflite",), out_dir=tmp_path / "new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["keep.txt"]


def test_options_validation():
    with pytest.raises(ConfigError, match="opt_batch"):
        TensorRTOptions(opt_batch=64, max_batch=32)
    with pytest.raises(ConfigError, match="input_size"):
        ExportOptions(input_size=(0, 3))
    with pytest.raises(ConfigError, match="invalid model name"):
        ExportOptions(name="a/b")
