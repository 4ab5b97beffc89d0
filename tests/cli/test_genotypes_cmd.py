"""`nasdeploy genotypes ...` through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nasdeploy.cli.main import main


def run_cli(args, capsys):
    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list(capsys):
    code, out, _ = run_cli(["genotypes", "list"], capsys)
    assert code == 0
    for name in ("DARTS_V1", "DARTS_V2", "NASNet", "AmoebaNet", "PNAS"):
        assert name in out
    assert "alias: DARTS" in out


def test_show_json_round_trips(capsys):
    code, out, _ = run_cli(["genotypes", "show", "DARTS", "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["name"] == "DARTS_V2" and data["normal"][7] == ["dil_conv_3x3", 2]


def test_show_unknown_name_is_one_line_error(capsys):
    code, out, err = run_cli(["genotypes", "show", "DART_V2"], capsys)
    assert code == 2
    assert err.strip().startswith("error: unknown genotype name 'DART_V2'") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("suffix, magic", [(".svg", b"<?xml"), (".png", b"\x89PNG")])
def test_draw(tmp_path, capsys, suffix, magic):
    out = tmp_path / f"cells{suffix}"
    code, _, _ = run_cli(["genotypes", "draw", "AmoebaNet", "-o", str(out)], capsys)
    assert code == 0 and out.read_bytes().startswith(magic)
    if suffix == ".svg":
        text = out.read_text()
        assert "conv_7x1_1x7" in text and "normal cell" in text and "reduction cell" in text


def test_draw_bad_extension(tmp_path, capsys):
    code, _, err = run_cli(["genotypes", "draw", "DARTS", "-o", str(tmp_path / "x.pdf")], capsys)
    assert code == 2 and "must end in .svg or .png" in err
    assert not (tmp_path / "x.pdf").exists()


def test_deploying_a_genotype_does_not_load_search_code():
    code = (
        "import sys, nasdeploy.nets, nasdeploy.cli.genotypes_cmd;"
        "from nasdeploy.nets import build_network; build_network('DARTS', 'cifar', channels=8, layers=3);"
        "bad = [m for m in sys.modules if m.startswith(('nasdeploy.search', 'nasdeploy.spaces', 'nasdeploy.kernels'))];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_genotype_module_imports_no_model_code():
    code = "import sys, nasdeploy.genotypes; assert 'torch' not in sys.modules, 'genotypes imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
