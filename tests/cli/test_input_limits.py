"""Oversized, deep and hostile inputs: each is refused in one line (exit 2) before anything is allocated or touched.

Every case runs the real CLI in a subprocess under a 4 GB address-space limit (`ulimit -v 4000000`), in an empty
working directory holding only the inputs the case made; afterwards the tree must be what it was, except the
folder the command writes (its own --out). The cases come from issue 23's probe, one or more per class.
"""

from __future__ import annotations

import json
import os
import re
import stat
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path
from typing import Callable

import pytest
from helpers import file_maker, tree_snapshot

import nasdeploy
from nasdeploy.errors import ConfigError, LimitError
from nasdeploy.utils import limits
from nasdeploy.utils.files import atomic_path, write_text_atomic
from nasdeploy.utils.ownership import (
    MARK_NAME, check_folder, claim_folder, clear_own_entries, folder_kind, mark_folder, remove_stale_staging,
    report_path,
)
from nasdeploy.utils.runlock import run_directory_lock
from nasdeploy.utils.yamlconfig import parse_yaml

# The package under test (the checkout pytest imported), so the cases can be pointed at another checkout.
SOURCE = Path(nasdeploy.__file__).resolve().parents[1]
CONFIGS = SOURCE / "configs"
DEMO_SEARCH = str(CONFIGS / "darts_cnn_demo_search.yaml")
ADDRESS_SPACE = 4_000_000 * 1024  # ulimit -v 4000000 (KiB)
# Keep a search that does start (the original code, in the lock case) to a few seconds.
TINY_SEARCH = ["--no-progress", "data.demo_train_size=16", "search.epochs=1", "search.batch_size=4",
               "search.eval_images=8"]

RUNNER = textwrap.dedent("""
    import os, re, sys
    swap = os.environ.pop("LIMITS_TEST_SWAP", "")
    if swap:  # someone replaces the temp file with a link to a victim the moment the tool reopens it by name
        pattern, victim = swap.split("=>")
        def hook(event, args):
            if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
                path = os.fsdecode(args[0])
                if re.search(pattern, path) and os.path.isfile(path) and not os.path.islink(path):
                    os.unlink(path)
                    os.symlink(victim, path)
        sys.addaudithook(hook)
    from nasdeploy.cli.main import main
    main(sys.argv[1:])
""")


def run_cli(argv: list[str], cwd: Path, env: dict[str, str] | None = None,
            timeout: int = 600) -> subprocess.CompletedProcess:
    """The CLI in a subprocess under the 4 GB address-space limit, with the default limits and one thread."""
    import resource

    base = {k: v for k, v in os.environ.items() if not k.startswith(limits.ENV_PREFIX)}
    base.update(PYTHONPATH=str(SOURCE), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **(env or {}))

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    return subprocess.run([sys.executable, "-c", RUNNER, *argv], cwd=cwd, env=base, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=cap)


def _nested_yaml(d: Path) -> str:
    return file_maker("c.yaml", "search:\n  lr: " + "[" * 100_000 + "]" * 100_000 + "\n")(d)


def laughs(levels: int = 9) -> str:
    """A YAML list of nested aliases that expands to 10**levels strings (a "billion laughs" at 9)."""
    items = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


def _billion_laughs(d: Path) -> str:
    return file_maker("c.yaml", f"search:\n  lr: {laughs()}\n")(d)


def _genotype_with_nodes(nodes: int) -> Callable[[Path], str]:
    pairs = [["skip_connect", k // 2 + 1] for k in range(2 * nodes)]
    concat = list(range(2, nodes + 2))
    return file_maker("g.json", json.dumps({"format": "nasdeploy.genotype", "schema_version": 1, "kind": "cnn_cell",
                                        "normal": pairs, "normal_concat": concat, "reduce": pairs,
                                        "reduce_concat": concat}, separators=(",", ":")))


def bomb_png(path: Path, width: int = 20_000, height: int = 20_000) -> None:
    """A 50 KB PNG whose header claims width x height 1-bit pixels (400 MP by default: 1.2 GB once RGB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def _bomb_folder(d: Path) -> str:
    folder = d / "images" / "train" / "shapes"
    folder.mkdir(parents=True)
    for k in range(4):
        bomb_png(folder / f"{k}.png")
    return str(d / "images")


def _run_dir_with_lock_link(d: Path) -> str:
    (d / "precious.txt").write_text("keep me")
    (d / "run").mkdir()
    mark_folder(d / "run", "run")  # a run directory of the tool in every other respect
    (d / "run" / ".lock").symlink_to("../precious.txt")
    return str(d / "run")


def _victim(d: Path) -> str:
    (d / "precious.txt").write_text("keep me")
    return str(d / "precious.txt")


# (id, make input -> value for {X} (or None), argv, words the one error line must contain, env for the CLI)
CASES: list[tuple[str, Callable[[Path], str] | None, list[str], list[str], dict[str, str]]] = [
    ("json-genotype-nested-100000", file_maker("g.json", "[" * 100_000 + "]" * 100_000),
     ["genotypes", "show", "{X}"], ["nesting_depth"], {}),
    ("json-genotype-50000-nodes", _genotype_with_nodes(50_000), ["genotypes", "show", "{X}"],
     ["genotype_nodes", limits.GENOTYPE_NODES.env], {limits.GENOTYPE_BYTES.env: str(100 * limits.MIB)}),
    ("json-genotype-5-mib", _genotype_with_nodes(50_000), ["genotypes", "show", "{X}"], ["genotype_bytes"], {}),
    ("yaml-config-nested-100000", _nested_yaml, ["search", "--config", "{X}", "--out", "run"], ["nesting_depth"], {}),
    ("yaml-billion-laughs", _billion_laughs, ["search", "--config", "{X}", "--out", "run"], ["yaml_nodes"], {}),
    ("yaml-integer-5000-digits", file_maker("c.yaml", "search:\n  seed: " + "7" * 5000 + "\n"),
     ["search", "--config", "{X}", "--out", "run"], ["c.yaml", "digits"], {}),
    ("seed-2**70", None, ["search", "--config", DEMO_SEARCH, "--out", "run", f"search.seed={2 ** 70}"],
     ["search.seed", "64 bits"], {}),
    ("data-seed-negative", None, ["search", "--config", DEMO_SEARCH, "--out", "run", "data.demo_seed=-1", *TINY_SEARCH],
     ["data.demo_seed"], {}),
    ("demo-dataset-10**12-images", None, ["search", "--config", DEMO_SEARCH, "--out", "run",
                                          "data.demo_train_size=1000000000000"],
     ["data.demo_train_size", "generated_data_bytes"], {}),
    ("segmentation-dataset-10**12-images", None, ["search", "--config", str(CONFIGS / "autodeeplab_demo_search.yaml"),
                                                  "--out", "run", "data.num_train=1000000000000"],
     ["data.num_train", "generated_data_bytes"], {}),
    ("text-corpus-10**12-sentences", None, ["search", "--config", str(CONFIGS / "darts_rnn_demo_search.yaml"), "--out",
                                            "run", "data.demo_train_sentences=1000000000000"],
     ["data.demo_train_sentences", "generated_data_bytes"], {}),
    ("data-image-size-100000", None, ["search", "--config", DEMO_SEARCH, "--out", "run", "data.image_size=100000"],
     ["data.image_size", "input_side"], {}),
    ("zero-std", None, ["search", "--config", DEMO_SEARCH, "--out", "run", "data.std=[0.2,0,0.2]"], ["data.std"], {}),
    ("negative-std", None, ["search", "--config", DEMO_SEARCH, "--out", "run", "data.std=[-0.3,0.3,0.3]", *TINY_SEARCH],
     ["data.std"], {}),
    ("image-folder-decompression-bomb", _bomb_folder,
     ["search", "--config", DEMO_SEARCH, "--out", "run", "--data-dir", "{X}", "data.dataset=imagefolder",
      "search.batch_size=2", "search.epochs=1", "--no-progress"], ["image_pixels", "0.png"], {}),
    ("image-folder-decompression-bomb-in-a-worker", _bomb_folder,
     ["search", "--config", DEMO_SEARCH, "--out", "run", "--data-dir", "{X}", "data.dataset=imagefolder",
      "data.num_workers=1", "search.batch_size=2", "search.epochs=1", "--no-progress"], ["image_pixels", "0.png"], {}),
    ("lock-is-a-symlink", _run_dir_with_lock_link, ["search", "--config", DEMO_SEARCH, "--out", "{X}", *TINY_SEARCH],
     [".lock", "symbolic link"], {}),
    ("temp-file-swapped-for-a-symlink", _victim, ["genotypes", "draw", "DARTS_V2", "-o", "cells.svg"],
     ["symbolic link", "cells.svg"], {"LIMITS_TEST_SWAP": r"/\.cells\.svg\.[a-z0-9_]{8}\.tmp$=>{X}"}),
]
OWN_FOLDER = "run"  # what a search may write before its refusal (the image-folder case reads images mid-search)


def _outside_own_folder(root: Path) -> dict[str, tuple[int, int]]:
    return {k: v for k, v in tree_snapshot(root).items() if k != OWN_FOLDER and not k.startswith(OWN_FOLDER + "/")}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_oversized_or_hostile_input_is_one_error_line_and_touches_nothing(case, tmp_path):
    name, make, argv, words, env = case
    value = make(tmp_path) if make is not None else None
    argv = [a.replace("{X}", value) if value is not None else a for a in argv]
    env = {k: v.replace("{X}", value) if value is not None else v for k, v in env.items()}
    precious = tmp_path / "precious.txt"
    before = _outside_own_folder(tmp_path)
    mode = precious.stat().st_mode if precious.exists() else None

    proc = run_cli(argv, tmp_path, env)

    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (name, proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, (name, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), (name, proc.stderr[-2000:])
    assert len(lines[0]) < 400, (name, lines[0][:400])  # the line never prints an expanded or huge value
    for word in words:
        assert word.lower() in lines[0].lower(), (name, word, lines[0])
    assert _outside_own_folder(tmp_path) == before, name
    if mode is not None:
        assert precious.read_text() == "keep me" and precious.stat().st_mode == mode, name


def test_billion_laughs_is_refused_while_read_and_never_printed():
    started = time.process_time()
    with pytest.raises(LimitError, match="yaml_nodes") as exc:
        parse_yaml(f"lr: {laughs()}", "c.yaml")
    assert "lol" not in str(exc.value)
    assert time.process_time() - started < 60  # generous: the refusal comes after ~100,000 nodes, not 10**9


def test_yaml_aliases_within_the_limits_load_and_a_self_containing_alias_is_refused():
    assert parse_yaml("a: &x [1, 2]\nb: *x\nc: {d: *x}\n", "c.yaml") == {"a": [1, 2], "b": [1, 2], "c": {"d": [1, 2]}}
    with pytest.raises(ConfigError, match="contains itself"):
        parse_yaml("a: &x [1, *x]\n", "c.yaml")
    many = "a: &x 1\nb: [" + ", ".join(["*x"] * 101) + "]\n"
    with pytest.raises(LimitError, match="yaml_aliases"):
        parse_yaml(many, "c.yaml")


def test_a_limit_is_raised_by_its_environment_variable_read_at_each_check(monkeypatch):
    text = "a: &x [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\nb: [" + ", ".join(["*x"] * 50) + "]\n"
    monkeypatch.setenv(limits.YAML_NODES.env, "100")
    with pytest.raises(LimitError, match=limits.YAML_NODES.env):
        parse_yaml(text, "c.yaml")
    monkeypatch.setenv(limits.YAML_NODES.env, "1000")
    assert len(parse_yaml(text, "c.yaml")["b"]) == 50
    monkeypatch.setenv(limits.YAML_NODES.env, "lots")
    with pytest.raises(LimitError, match="positive whole number"):
        limits.YAML_NODES.value()
    monkeypatch.setenv(limits.NESTING_DEPTH.env, "100000")  # a fixed limit ignores the environment
    assert limits.NESTING_DEPTH.value() == limits.NESTING_DEPTH.default


@pytest.mark.parametrize("text", ['{"a": "[[[[", "b": [[1], {"c": []}]}', '[1, "\\"]]]", [[2]]]', '"[[["', "[]",
                                  '{"k": "\\\\"}'])
def test_nesting_depth_matches_the_parsed_structure(text):
    def depth(value) -> int:
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        return 0 if children is None else 1 + max((depth(v) for v in children), default=0)

    assert limits.nesting_depth(text) == depth(json.loads(text))


def test_metadata_literals_are_bounded():
    scopes = limits.literal_eval_bounded("['', 'cells.0', 'cells.0.ops']", "name scopes")
    assert scopes == ["", "cells.0", "cells.0.ops"]
    for text, word in [("-" * 60_000 + "1", "too complex"), ("[" * 40 + "]" * 40, "nesting_depth"),
                       ("1" * 70_000, "metadata_chars")]:
        with pytest.raises(LimitError, match=word):
            limits.literal_eval_bounded(text, "metadata")


@pytest.mark.parametrize("channels, layers, size", [(8, 5, 32), (16, 8, 48)])
def test_network_estimate_bounds_the_built_networks_parameters_and_activations(channels, layers, size, one_thread):
    import torch

    from nasdeploy.nets import build_network

    model = build_network("DARTS_V2", net="cifar", channels=channels, layers=layers).eval()
    elements = [sum(p.numel() for p in model.parameters())]
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(lambda _m, _i, out: elements.append(out.numel())) for m in leaves]
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    measured = 4 * sum(elements)
    estimate = limits.estimate_network_bytes(limits.CellNetworkShape(channels, layers, (size, size)))
    assert measured <= estimate <= 3 * measured


def test_network_check_refuses_huge_settings_and_passes_the_published_ones():
    limits.check_network("DARTS CIFAR", limits.CellNetworkShape(36, 20, (32, 32)))
    limits.check_network("DARTS ImageNet", limits.CellNetworkShape(48, 14, (224, 224), stem_stride=8, num_classes=1000))
    for shape, word in [(limits.CellNetworkShape(36, 20, (100_000, 100_000)), "input_side"),
                        (limits.CellNetworkShape(36, 20, (4096, 4096)), "network_bytes"),
                        (limits.CellNetworkShape(10**6, 20, (32, 32)), "channels"),
                        (limits.CellNetworkShape(36, 10**5, (32, 32)), "layers")]:
        with pytest.raises(LimitError, match=word):
            limits.check_network("net", shape)


def test_seeds_and_64_bit_integers():
    limits.check_int64("x", 2**63 - 1)
    limits.check_seed("seed", 2**32 - 1)
    for call, value in [(limits.check_int64, 2**63), (limits.check_int64, -(2**63) - 1), (limits.check_seed, -1),
                        (limits.check_seed, 2**32), (limits.check_seed, True)]:
        with pytest.raises(LimitError):
            call("v", value)


def test_image_within_the_pixel_limit_loads_and_a_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    from PIL import Image

    from nasdeploy.data.images import open_image

    Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "ok.png")
    assert open_image(tmp_path / "ok.png", "RGB").size == (40, 30)
    monkeypatch.setenv(limits.IMAGE_PIXELS.env, str(40 * 30 - 1))
    with pytest.raises(LimitError, match="image_pixels"):
        open_image(tmp_path / "ok.png", "RGB")
    monkeypatch.delenv(limits.IMAGE_PIXELS.env)
    bomb_png(tmp_path / "bomb.png")
    started = time.process_time()
    with pytest.raises(LimitError, match="image_pixels"):
        open_image(tmp_path / "bomb.png", "RGB")
    assert time.process_time() - started < 30  # refused from the header: 400 MP are never decoded


def test_temp_file_replaced_by_a_link_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    victim.chmod(0o600)
    with pytest.raises(OSError, match="symbolic link"):
        with atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"data")
            tmp.unlink()
            tmp.symlink_to(victim)  # someone swaps the temp file before it is published
    assert victim.read_text() == "keep me" and stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim.txt"]
    write_text_atomic(tmp_path / "out.txt", "fine")
    assert (tmp_path / "out.txt").read_text() == "fine" and not (tmp_path / "out.txt").is_symlink()


def test_lock_with_other_names_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "victim.txt").write_text("keep me")
    os.link(tmp_path / "victim.txt", tmp_path / "run" / ".lock")
    with pytest.raises(ConfigError, match="hard links"):
        with run_directory_lock(tmp_path / "run"):
            pass
    assert (tmp_path / "victim.txt").read_text() == "keep me"


def test_folders_are_claimed_only_when_absent_empty_or_marked_the_same(tmp_path):
    assert claim_folder(tmp_path / "new", "run") == tmp_path / "new" and folder_kind(tmp_path / "new") == "run"
    assert check_folder(tmp_path / "new", "run") is True
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".lock").write_text("")
    assert check_folder(tmp_path / "empty", "export") is False
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / MARK_NAME).symlink_to(tmp_path / "new" / MARK_NAME)  # a linked mark is no mark
    for folder, kind, word in [("mine", "run", "did not make"), ("new", "export", "is a run directory"),
                               ("afile", "run", "not a folder"), ("fake", "run", "did not make")]:
        with pytest.raises(ConfigError, match=word):
            claim_folder(tmp_path / folder, kind)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me" and not (tmp_path / "mine" / MARK_NAME).exists()


def test_force_clears_only_the_commands_own_entries_and_never_follows_links(tmp_path):
    run = claim_folder(tmp_path / "run", "run")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep.txt").write_text("keep me")
    (run / "checkpoint.pt").write_text("x")
    (run / "notes.txt").write_text("user's")
    (run / "search").symlink_to(tmp_path / "outside")
    removed = clear_own_entries(run, "run", ["checkpoint.pt", "search", "log.jsonl"])
    assert [p.name for p in removed] == ["checkpoint.pt", "search"]
    assert sorted(p.name for p in run.iterdir()) == [MARK_NAME, "notes.txt"]
    assert (tmp_path / "outside" / "keep.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="nothing is cleared"):
        clear_own_entries(tmp_path / "outside", "run", ["keep.txt"])


def test_stale_staging_folders_of_a_killed_run_are_removed_and_nothing_else(tmp_path):
    old = time.time() - 3600
    stale = tmp_path / ".exp.partial-abcd1234"
    mark_folder(stale, "export")
    empty = tmp_path / ".exp.partial-efgh5678"
    empty.mkdir()
    foreign = tmp_path / ".exp.partial-ijkl9012"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    other = tmp_path / ".exp.partial-xyz"
    other.mkdir()
    link = tmp_path / ".exp.partial-link1234"
    link.symlink_to(foreign)
    for path in (stale, empty, foreign, other):
        os.utime(path, (old, old))
    fresh = tmp_path / ".exp.partial-new12345"  # a staging folder of a run going on now
    mark_folder(fresh, "export")
    assert sorted(p.name for p in remove_stale_staging(tmp_path, "exp", "export")) == sorted([empty.name, stale.name])
    assert foreign.is_dir() and other.is_dir() and link.is_symlink() and fresh.is_dir()


def test_report_paths_are_relative_to_the_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert report_path("out/model.onnx", "out/export.json") == "model.onnx"
    assert report_path(tmp_path / "ckpt.pt", Path("out/reports/parity.json")) == os.path.join("..", "..", "ckpt.pt")


def test_every_limit_states_its_reason_and_a_unique_name():
    names = [limit.name for limit in limits.LIMITS]
    assert len(set(names)) == len(names)
    for limit in limits.LIMITS:
        assert limit.default > 0 and len(limit.why) > 20 and re.fullmatch(r"[a-z_]+", limit.name)
