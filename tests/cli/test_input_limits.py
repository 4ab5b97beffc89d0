"""Oversized, deep and hostile inputs, and folders the tool did not make: each is refused in one line (exit 2)
before anything is allocated or touched.

Every case runs the real CLI in-process in an empty working directory holding only the inputs the case made;
afterwards the tree must be what it was, except the folder the command writes (its own --out). The cases whose
input would need gigabytes also run, all in one child process, under a 4 GB address-space limit
(`ulimit -v 4000000`); a temp file swapped for a link mid-write needs an audit hook, so it runs in a child too.
The cases come from issue 23's probe, one or more per class (user data, tracebacks, values that cannot work).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import pytest
from helpers import CONFIGS, REPO, bomb_png, file_maker, laughs, run_cli, tree_snapshot

from nasdeploy.utils import limits
from nasdeploy.utils.ownership import mark_folder

DEMO_SEARCH = str(CONFIGS / "darts_cnn_demo_search.yaml")
ADDRESS_SPACE = 4_000_000 * 1024  # ulimit -v 4000000 (KiB)
# Keep a search that does start to a few seconds (the reference mixed op: no C++ extension to build).
TINY_SEARCH = ["--no-progress", "data.demo_train_size=16", "search.epochs=1", "search.batch_size=4",
               "search.eval_images=8", "model.mixed_op=reference"]
TINY_NET = ["--net", "cifar", "--channels", "4", "--layers", "3"]


def _nested_yaml(d: Path) -> str:
    return file_maker("c.yaml", "search:\n  lr: " + "[" * 100_000 + "]" * 100_000 + "\n")(d)


def _billion_laughs(d: Path) -> str:
    return file_maker("c.yaml", f"search:\n  lr: {laughs()}\n")(d)


def _genotype_with_nodes(nodes: int) -> Callable[[Path], str]:
    pairs = [["skip_connect", k // 2 + 1] for k in range(2 * nodes)]
    concat = list(range(2, nodes + 2))
    return file_maker("g.json", json.dumps({"format": "nasdeploy.genotype", "schema_version": 1, "kind": "cnn_cell",
                                            "normal": pairs, "normal_concat": concat, "reduce": pairs,
                                            "reduce_concat": concat}, separators=(",", ":")))


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


def _run_dir_with(name: str, text: str) -> Callable[[Path], str]:
    """A run directory of the tool holding a planted record."""
    def make(d: Path) -> str:
        mark_folder(d / "run", "run")
        (d / "run" / name).write_text(text)
        return str(d / "run")
    return make


def _victim(d: Path) -> str:
    (d / "precious.txt").write_text("keep me")
    return str(d / "precious.txt")


def _user_folder(d: Path) -> str:
    """A folder of the user's own files (nested) that nasdeploy did not make."""
    (d / "mine" / "notes").mkdir(parents=True)
    (d / "mine" / "notes" / "todo.txt").write_text("keep me")
    (d / "mine" / "checkpoint.pt").write_text("not the tool's")
    (d / "mine" / "model.onnx").write_text("not the tool's")
    return str(d / "mine")


def _checkpoint_asking_for(**net_kwargs: int) -> Callable[[Path], str]:
    """A small training checkpoint whose meta asks for a network of `net_kwargs` (it holds no such weights)."""
    def make(d: Path) -> str:
        import torch

        from nasdeploy.genotypes import genotype_to_dict, get_genotype
        from nasdeploy.utils.checkpoint import save_checkpoint

        meta = {"genotype": genotype_to_dict(get_genotype("DARTS_V2")), "net": "cifar",
                "net_kwargs": {"layers": 20, "num_classes": 10, **net_kwargs}}
        save_checkpoint(d / "big.pt", {"stem.0.weight": torch.zeros(1)}, kind="train", meta=meta)
        return str(d / "big.pt")
    return make


def _onnx_with(scopes: str | None = None, input_shape: str = "[1, 3, 8, 8]") -> Callable[[Path], str]:
    """A one-Conv ONNX model with the given node name-scope and example-input-shape metadata."""
    def make(d: Path) -> str:
        import numpy as np
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
        if scopes is not None:
            node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=scopes)
        graph = helper.make_graph(
            [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.metadata_props.add(key="example_input_shape", value=input_shape)
        onnx.save(model, d / "m.onnx")
        return str(d / "m.onnx")
    return make


# (id, make input -> value for {X} (or None), argv, words the one error line must contain, env for the CLI)
Case = tuple[str, "Callable[[Path], str] | None", list[str], list[str], dict[str, str]]
CASES: list[Case] = [
    # tracebacks: inputs whose size or depth had no limit
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
    ("image-folder-decompression-bomb", _bomb_folder,
     ["search", "--config", DEMO_SEARCH, "--out", "run", "--data-dir", "{X}", "data.dataset=imagefolder",
      "search.batch_size=2", "search.epochs=1", "--no-progress", "model.mixed_op=reference"], ["image_pixels", "0.png"], {}),
    ("image-folder-decompression-bomb-in-a-worker", _bomb_folder,
     ["search", "--config", DEMO_SEARCH, "--out", "run", "--data-dir", "{X}", "data.dataset=imagefolder",
      "data.num_workers=1", "search.batch_size=2", "search.epochs=1", "--no-progress", "model.mixed_op=reference"],
     ["image_pixels", "0.png"], {}),
    ("export-input-size-100000", None, ["export", "DARTS_V2", *TINY_NET, "--input-size", "100000", "--out", "run"],
     ["--input-size", "input_side"], {}),
    ("profile-input-size-100000", None, ["profile", "DARTS_V2", *TINY_NET, "--input-size", "100000"],
     ["--input-size", "input_side"], {}),
    ("profile-input-size-8000", None, ["profile", "DARTS_V2", "--net", "cifar", "--input-size", "8000"],
     ["cifar network", "network_bytes"], {}),
    ("export-checkpoint-asks-for-200000-channels", _checkpoint_asking_for(channels=200_000),
     ["export", "DARTS_V2", "--net", "cifar", "--checkpoint", "{X}", "--out", "run"], ["channels"], {}),
    ("export-checkpoint-asks-for-2-tb", _checkpoint_asking_for(channels=4000, layers=200),
     ["export", "DARTS_V2", "--net", "cifar", "--checkpoint", "{X}", "--out", "run"], ["network_bytes"], {}),
    ("onnx-name-scope-60000-operators", _onnx_with(scopes="-" * 60_000 + "1"), ["profile", "{X}"],
     ["name scopes", "too complex"], {}),
    ("onnx-input-shape-nested-100000", _onnx_with(input_shape="[" * 100_000 + "]" * 100_000), ["profile", "{X}"],
     ["example_input_shape", "metadata_chars"], {}),
    ("run-record-nested-100000", _run_dir_with("done.json", "[" * 100_000 + "]" * 100_000),
     ["search", "--config", DEMO_SEARCH, "--out", "{X}", *TINY_SEARCH], ["done.json", "nesting_depth"], {}),
    ("cost-table-nested-100000", file_maker("t.json", "[" * 100_000 + "]" * 100_000),
     ["search", "--config", DEMO_SEARCH, "--out", "run", "search.cost.table={X}", *TINY_SEARCH],
     ["cost table", "nesting_depth"], {}),
    # values that parse but cannot work
    ("zero-std", None, ["search", "--config", DEMO_SEARCH, "--out", "run", "data.std=[0.2,0,0.2]"], ["data.std"], {}),
    ("negative-std", None, ["search", "--config", DEMO_SEARCH, "--out", "run", "data.std=[-0.3,0.3,0.3]", *TINY_SEARCH],
     ["data.std"], {}),
    ("search-2-layers-no-normal-cell", None, ["search", "--config", DEMO_SEARCH, "--out", "run", "model.layers=2",
                                              *TINY_SEARCH], ["model.layers", "normal cell"], {}),
    # user data: folders the tool did not make, links where its files go
    ("search-force-into-a-user-folder", _user_folder,
     ["search", "--config", DEMO_SEARCH, "--out", "{X}", "--force", *TINY_SEARCH], ["did not make"], {}),
    ("export-overwrite-onto-a-user-folder", _user_folder,
     ["export", "DARTS_V2", *TINY_NET, "--out", "{X}", "--overwrite"], ["did not make"], {}),
    ("lock-is-a-symlink", _run_dir_with_lock_link, ["search", "--config", DEMO_SEARCH, "--out", "{X}", *TINY_SEARCH],
     [".lock", "symbolic link"], {}),
]
OWN_FOLDER = "run"  # what a command may write before its refusal (the image-folder cases read images mid-search)
# The cases whose input, unchecked, asks for gigabytes: they also run under the 4 GB address-space limit.
MEMORY_CASES = ("json-genotype-nested-100000", "json-genotype-50000-nodes", "yaml-config-nested-100000",
                "yaml-billion-laughs", "demo-dataset-10**12-images", "segmentation-dataset-10**12-images",
                "text-corpus-10**12-sentences", "data-image-size-100000", "image-folder-decompression-bomb",
                "export-input-size-100000", "profile-input-size-100000", "profile-input-size-8000",
                "export-checkpoint-asks-for-200000-channels", "export-checkpoint-asks-for-2-tb",
                "onnx-name-scope-60000-operators", "onnx-input-shape-nested-100000", "run-record-nested-100000")


def _outside_own_folder(root: Path) -> dict[str, tuple[int, int]]:
    return {k: v for k, v in tree_snapshot(root).items() if k != OWN_FOLDER and not k.startswith(OWN_FOLDER + "/")}


def _prepare(case: Case, folder: Path) -> tuple[list[str], dict[str, str]]:
    """Make the case's inputs in `folder`; its argv and environment with {X} filled in."""
    _, make, argv, _, env = case
    value = make(folder) if make is not None else None
    fill = (lambda a: a.replace("{X}", value)) if value is not None else (lambda a: a)
    return [fill(a) for a in argv], {k: fill(v) for k, v in env.items()}


def _check(case: Case, code: int, err: str) -> None:
    """Exit 2, one short `error:` line naming the case's words, no traceback."""
    name, words = case[0], case[3]
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (name, code, err[-2000:])
    assert "Traceback" not in err, (name, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), (name, err[-2000:])
    assert len(lines[0]) < 400, (name, lines[0][:400])  # the line never prints an expanded or huge value
    for word in words:
        assert word.lower() in lines[0].lower(), (name, word, lines[0])


def _assert_untouched(root: Path, before: dict[str, tuple[int, int]], mode: int | None, name: str) -> None:
    assert _outside_own_folder(root) == before, name
    precious = root / "precious.txt"
    if mode is not None:
        assert precious.read_text() == "keep me" and precious.stat().st_mode == mode, name


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_oversized_hostile_or_foreign_input_is_one_error_line_and_touches_nothing(case, tmp_path, monkeypatch,
                                                                                  capsys):
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith(limits.ENV_PREFIX)]:
        monkeypatch.delenv(key)
    argv, env = _prepare(case, tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    precious = tmp_path / "precious.txt"
    mode = precious.stat().st_mode if precious.exists() else None
    before = _outside_own_folder(tmp_path)
    capsys.readouterr()

    code, _, err = run_cli(argv, capsys)

    _check(case, code, err)
    _assert_untouched(tmp_path, before, mode, case[0])


CHILD = textwrap.dedent("""
    import contextlib, io, json, os, sys
    import torch
    torch.set_num_threads(1)
    from nasdeploy.cli.main import main
    results = []
    for case in json.load(sys.stdin):
        os.chdir(case["cwd"])
        os.environ.update(case["env"])
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                main(case["argv"])
                code = 0
            except SystemExit as exc:
                code = exc.code or 0
            except BaseException as exc:  # what the CLI let through would have been a traceback
                code = -1
                err.write(f"Traceback: {type(exc).__name__}: {exc}"[:2000])
        for key in case["env"]:
            del os.environ[key]
        results.append({"code": code, "stderr": err.getvalue()})
    print(json.dumps(results))
""")


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(limits.ENV_PREFIX)}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


def _address_space_cap() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def test_every_oversized_input_is_refused_under_a_4_gb_address_space(tmp_path):
    """One child process under `ulimit -v 4000000` runs every memory case: none is killed or dies with a traceback."""
    cases = [case for case in CASES if case[0] in MEMORY_CASES]
    assert len(cases) == len(MEMORY_CASES)
    jobs, snapshots = [], []
    for k, case in enumerate(cases):
        folder = tmp_path / f"case{k}"
        folder.mkdir()
        argv, env = _prepare(case, folder)
        jobs.append({"cwd": str(folder), "argv": argv, "env": env})
        snapshots.append(_outside_own_folder(folder))
    proc = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(jobs), env=_child_env(), capture_output=True,
                          text=True, timeout=600, preexec_fn=_address_space_cap)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for k, (case, result) in enumerate(zip(cases, results)):
        _check(case, result["code"], result["stderr"])
        _assert_untouched(tmp_path / f"case{k}", snapshots[k], None, case[0])


SWAP_RUNNER = textwrap.dedent("""
    import os, re, sys
    pattern, victim = os.environ.pop("LIMITS_TEST_SWAP").split("=>")
    def hook(event, args):  # someone replaces the temp file with a link to a victim the moment the tool reopens it
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            if re.search(pattern, path) and os.path.isfile(path) and not os.path.islink(path):
                os.unlink(path)
                os.symlink(victim, path)
    sys.addaudithook(hook)
    from nasdeploy.cli.main import main
    main(sys.argv[1:])
""")


def test_temp_file_swapped_for_a_link_mid_write_is_refused(tmp_path):
    """An audit hook (which stays for the life of a process) swaps the temp file: a child process of its own."""
    victim = _victim(tmp_path)
    case: Case = ("temp-file-swapped-for-a-symlink", None, [], ["symbolic link", "cells.svg"], {})
    mode = (tmp_path / "precious.txt").stat().st_mode
    before = _outside_own_folder(tmp_path)
    swap = rf"/\.cells\.svg\.[a-z0-9_]{{8}}\.tmp$=>{victim}"
    proc = subprocess.run([sys.executable, "-c", SWAP_RUNNER, "genotypes", "draw", "DARTS_V2", "-o", "cells.svg"],
                          cwd=tmp_path, env=_child_env(LIMITS_TEST_SWAP=swap), capture_output=True, text=True,
                          timeout=600, preexec_fn=_address_space_cap)
    _check(case, proc.returncode, proc.stderr)
    _assert_untouched(tmp_path, before, mode, case[0])
