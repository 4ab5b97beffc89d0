"""`nasdeploy profile`: the acceptance numbers through the CLI, JSON report, one-line errors."""

from __future__ import annotations

import json

import pytest

from nasdeploy.cli.main import main


@pytest.mark.parametrize(
    "net, params, macs",
    [("imagenet", 4_718_752, 529.9e6), ("cifar", 3_349_342, 528.4e6)],
)
def test_profile_darts_v2_json(tmp_path, capsys, net, params, macs):
    out = tmp_path / f"{net}.json"
    md = tmp_path / f"{net}.md"
    main(["profile", "DARTS_V2", "--net", net, "--json", str(out), "--markdown", str(md)])
    text = capsys.readouterr().out
    assert md.read_text().strip() in text
    report = json.loads(out.read_text())
    (target,) = report["targets"]
    assert target["params"] == params and isinstance(target["macs"], int)
    assert abs(target["macs"] - macs) / macs < 1e-3
    assert "latency" in target and target["latency"]["results"] == {}
    assert "BN folded" in target["macs_convention"] and "BN folded" in text
    assert target["mobile_setting"]["applies"] is (net == "imagenet")
    if net == "imagenet":
        assert target["mobile_setting"]["passed"] is True and "pass (70.1M under)" in text
    assert f"{params:,}" in text and "### Per stage" in text and "### Per op type" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["profile", "NOT_A_GENOTYPE"], "unknown genotype name 'NOT_A_GENOTYPE'"),
        (["profile", "DARTS_V2", "--latency", "tpu"], "unknown latency backend 'tpu'"),
        (["profile", "missing.onnx"], "ONNX file not found"),
        (["profile", "DARTS_V2_RNN", "--net", "imagenet"], "wrong genotype kind"),
        (["profile", "DARTS_V2", "--input-size", "8"], "needs H and W >= 32"),
        (["profile", "DARTS_V2", "--channels", "7"], "channels must be even"),
        (["profile", "DARTS_V2", "--batch", "0", "--latency", "torch-cpu"], "batch must be a positive integer"),
    ],
)
def test_bad_input_is_one_line_error(capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_profile_segmentation_net_with_filter_multiplier_and_hxw(tmp_path):
    """Auto-DeepLab profiles through the same CLI: --filter-multiplier and an HxW input size."""
    import json as _json

    from nasdeploy.cli.main import main as _main
    from nasdeploy.profile.api import profile_target

    out = tmp_path / "seg.json"
    try:
        _main(["profile", "AutoDeepLab", "--net", "segmentation", "--filter-multiplier", "4",
               "--input-size", "65x97", "--no-breakdown", "--json", str(out)])
    except SystemExit as exc:
        assert not exc.code
    target = _json.loads(out.read_text())["targets"][0]
    assert target["input_shape"] == [3, 65, 97]
    direct = profile_target("AutoDeepLab", net="segmentation", channels=4, input_size=(3, 65, 97))
    assert target["params"] == direct.complexity.params and target["macs"] == direct.complexity.macs > 0


def test_profile_bad_input_size_is_one_line(capsys):
    from nasdeploy.cli.main import main as _main

    try:
        _main(["profile", "DARTS_V2", "--input-size", "224x"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "--input-size must be S or HxW" in capsys.readouterr().err
