"""The CLI error boundary: bad paths and binary input files end in one `error:` line and exit 2, no traceback."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from nasdeploy.cli import main as cli_main
from nasdeploy.cli.main import main
from nasdeploy.errors import ConfigError, GenotypeError
from nasdeploy.genotypes.serialize import load_genotype
from nasdeploy.utils.files import describe_os_error, write_text_atomic
from nasdeploy.utils.yamlconfig import load_yaml

BINARY = bytes(range(256)) * 4  # not UTF-8 (0x80.. are continuation bytes without a lead byte)


def _run(capsys, argv: list[str]) -> str:
    """Run the CLI in-process; return its single stderr line after checking exit code 2."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def binary_file(tmp_path: Path) -> Path:
    path = tmp_path / "blob.json"
    path.write_bytes(BINARY)
    return path


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "plain"
    path.write_text("x")
    return path


def _read_only_dir(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d
    if os.access("/sys", os.W_OK) and Path("/sys/kernel").is_dir():
        return Path("/sys")  # sysfs refuses new files even to root
    pytest.skip("running as root without a read-only folder to write into")


def test_output_in_proc_is_one_line(capsys, tmp_path):
    line = _run(capsys, ["genotypes", "draw", "DARTS_V2", "-o", "/proc/nasdeploy-test.svg"])
    assert line == "error: cannot write file: no such file or directory (/proc/nasdeploy-test.svg)"
    assert not list(Path("/proc").glob(".nasdeploy-test.svg.*"))


@pytest.mark.parametrize("sub", ["x.svg", "a/b/x.svg"])
def test_output_under_a_file_is_one_line(capsys, a_file, sub):
    line = _run(capsys, ["genotypes", "draw", "DARTS_V2", "-o", str(a_file / sub)])
    assert line == f"error: a file is in the way of a folder ({a_file})"


def test_output_in_read_only_folder_is_one_line(capsys, tmp_path):
    folder = _read_only_dir(tmp_path)
    target = folder / "nasdeploy-test.svg"
    line = _run(capsys, ["genotypes", "draw", "DARTS_V2", "-o", str(target)])
    assert line in (f"error: cannot write file: permission denied ({target})",
                    f"error: cannot write file: read-only file system ({target})")


def test_export_out_in_proc_names_the_folder_not_the_staging_one(capsys):
    line = _run(capsys, ["export", "DARTS_V2", "--out", "/proc/nasdeploy-test-export"])
    assert line == "error: cannot create the output folder: no such file or directory (/proc/nasdeploy-test-export)"


def test_export_out_under_a_file(capsys, a_file):
    line = _run(capsys, ["export", "DARTS_V2", "--out", str(a_file / "exp")])
    assert line == f"error: a file is in the way of a folder ({a_file})"


def test_missing_checkpoint_is_one_line(capsys, tmp_path):
    line = _run(capsys, ["export", "DARTS_V2", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "e")])
    assert line == f"error: checkpoint not found: {tmp_path / 'none.pt'}"
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("argv", [["genotypes", "show", "{f}"], ["export", "{f}", "--out", "{tmp}/e"],
                                  ["train", "--genotype", "{f}", "--config", "{tmp}/none.yaml"]])
def test_binary_genotype_file(capsys, tmp_path, binary_file, argv):
    argv = [a.format(f=binary_file, tmp=tmp_path) for a in argv]
    line = _run(capsys, argv)
    assert ("not a genotype JSON file" in line and str(binary_file) in line) or "config file not found" in line


@pytest.mark.parametrize("argv", [["train", "--config", "{f}"], ["search", "--config", "{f}"], ["pipeline", "{f}"]])
def test_binary_config_file(capsys, binary_file, argv):
    line = _run(capsys, [a.format(f=binary_file) for a in argv])
    assert line.startswith(f"error: not a YAML config file: {binary_file} is not UTF-8 text (byte 128")


def test_readers_raise_typed_errors(binary_file):
    with pytest.raises(GenotypeError, match=r"^not a genotype JSON file: .*blob\.json is not UTF-8 text \(byte 128"):
        load_genotype(binary_file)
    with pytest.raises(ConfigError, match=r"^not a YAML config file: .*blob\.json is not UTF-8 text \(byte 128"):
        load_yaml(binary_file)


@click.command()
@click.argument("kind")
def boom(kind: str) -> None:
    """Raise the raw error a library call might leak."""
    if kind == "decode":
        BINARY.decode("utf-8")
    if kind == "permission":
        raise PermissionError(errno.EACCES, "Permission denied", "/data/run")
    if kind == "rename":
        raise OSError(errno.EXDEV, "Invalid cross-device link", "/a/x", None, "/b/x")
    if kind == "yaml":
        import yaml
        yaml.safe_load("a: [1")


@pytest.mark.parametrize("kind, expected", [
    ("decode", "error: a file is not UTF-8 text (byte 128: invalid start byte); is it a binary file?"),
    ("permission", "error: permission denied (/data/run)"),
    ("rename", "error: invalid cross-device link (/a/x -> /b/x)"),
    ("yaml", "error: not valid YAML: expected ',' or ']', but got '<stream end>'"),
])
def test_boundary_catches_leaked_errors(capsys, monkeypatch, kind, expected):
    monkeypatch.setitem(cli_main.SUBCOMMANDS, "boom", f"{__name__}:boom")
    assert _run(capsys, ["boom", kind]) == expected


@pytest.mark.parametrize("argv, words", [
    (["export"], ["Missing argument 'TARGET'", "nasdeploy export --help"]),
    (["profile", "DARTS_V2", "--json", "."], ["'--json'", "is a directory"]),
    (["genotypes", "draw", "DARTS_V2", "-o", "."], ["'--output'", "is a directory"]),
    (["profile", "DARTS_V2", "--no-such-option"], ["No such option"]),
])
def test_usage_errors_are_one_line(capsys, argv, words):
    line = _run(capsys, argv)
    assert all(word in line for word in words), line


def test_the_bare_command_still_shows_its_help(capsys):
    with pytest.raises(SystemExit):
        main([])
    assert "Commands:" in capsys.readouterr().err


def test_describe_os_error_plain():
    assert describe_os_error(FileNotFoundError(errno.ENOENT, "No such file or directory", "/x")) == \
        "no such file or directory (/x)"
    assert describe_os_error(OSError("disk on fire")) == "disk on fire"


def test_atomic_write_under_a_file_names_the_target(a_file):
    with pytest.raises(OSError) as err:
        write_text_atomic(a_file / "sub" / "x.txt", "x")
    assert describe_os_error(err.value) == f"a file is in the way of a folder ({a_file})"


def test_subprocess_has_no_traceback(binary_file):
    proc = subprocess.run([sys.executable, "-m", "nasdeploy", "genotypes", "show", str(binary_file)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: not a genotype JSON file: {binary_file} is not UTF-8 text (byte 128: invalid start byte)"]
