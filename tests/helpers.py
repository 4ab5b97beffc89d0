"""Paths and helpers shared by the tests (not a test module; conftest.py holds the shared fixtures)."""

from __future__ import annotations

import functools
import struct
import zlib
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
FIXTURES = REPO / "tests" / "fixtures"
SCRIPTS = REPO / "scripts"


def randomize_bn_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running stats and affine params, as a trained network has.

    With the init values (mean 0, var 1, weight 1, bias 0) an export that used batch statistics or
    dropped BN would go unnoticed more easily; these make eval-mode BN a real transform.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            elif isinstance(m, nn.Linear):
                m.weight.mul_(5.0)  # logits of order 1 make the relative tolerance meaningful
    return model


def one_error_line(capsys, argv: list[str]) -> str:
    """Run the CLI in-process on argv; assert it exits 2 with exactly one `error:` line and no traceback; return it."""
    import pytest

    from nasdeploy.cli.main import main

    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# The DARTS CNN pipeline on a tiny config (one search epoch, two training epochs; seconds on one core).
TINY_PIPELINE = {
    "name": "tiny",
    "search": {
        "data": {"dataset": "demo", "demo_train_size": 64, "demo_seed": 0, "num_workers": 0},
        "model": {"channels": 4, "layers": 3, "steps": 2, "multiplier": 2},
        "search": {"epochs": 1, "batch_size": 16, "eval_images": 16, "seed": 0, "threads": 1},
    },
    "train": {
        "data": {"dataset": "demo", "demo_train_size": 64, "demo_test_size": 32, "demo_seed": 0, "num_workers": 0},
        "model": {"net": "cifar", "channels": 4, "layers": 3, "auxiliary": True},
        "train": {"epochs": 2, "batch_size": 16, "seed": 0, "threads": 1},
    },
    "export": {"formats": ["onnx"]},
    "profile": {"net": "cifar", "channels": 8, "layers": 5, "compare": ["DARTS_V2"], "backends": [], "latency_for": []},
}


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in-process; (exit code, stdout, stderr)."""
    from nasdeploy.cli.main import main

    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def tree_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and mtime: equal snapshots mean nothing was written or deleted."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def file_maker(name: str, content: bytes | str):
    """A case builder for table tests: writes `content` to `name` under the case's folder and returns its path."""
    def make(d: Path) -> str:
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)
    return make


def assert_commands_parse(commands: dict[str, str]) -> None:
    """Every line of a report's reproducing commands names an existing `nasdeploy` subcommand whose options parse."""
    import shlex

    import click

    from nasdeploy.cli.main import cli

    for stage, text in commands.items():
        for line in text.splitlines():
            argv = shlex.split(line)
            assert argv[0] == "nasdeploy", (stage, line)
            command = cli.get_command(click.Context(cli), argv[1])
            assert command is not None, f"{stage}: no command 'nasdeploy {argv[1]}'"
            command.make_context(argv[1], argv[2:])  # click.UsageError on an unknown option or a bad value


def laughs(levels: int = 9) -> str:
    """A YAML list of nested aliases that expands to 10**levels strings (a "billion laughs" at 9)."""
    items = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


@functools.lru_cache(maxsize=None)
def _bomb_bytes(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def bomb_png(path: Path, width: int = 20_000, height: int = 20_000) -> None:
    """A 50 KB PNG whose header claims width x height 1-bit pixels (400 MP by default: 1.2 GB once RGB)."""
    path.write_bytes(_bomb_bytes(width, height))


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - reference| / max |reference|."""
    return float((ours - reference).abs().max() / reference.abs().max())


def seeded_tensors(names_shapes, seed: int, scale: float) -> dict[str, torch.Tensor]:
    """A fixture script's seeded draw: scale * N(0, 1) per tensor, in order, from one generator (float64)."""
    g = torch.Generator().manual_seed(seed)
    return {n: scale * torch.randn(shape, generator=g, dtype=torch.float64) for n, shape in names_shapes}
