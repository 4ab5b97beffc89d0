"""Bad input across every command: exit code 2, one `error:` line that names the problem, nothing written.

Each case runs the real CLI in-process inside an empty working directory holding only the inputs the case
made; afterwards the directory tree must be exactly what it was (no file or folder created or changed).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Callable

import pytest
import torch

from helpers import file_maker, tree_snapshot
from nasdeploy.cli.main import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEMO_SEARCH = str(CONFIGS / "darts_cnn_demo_search.yaml")
DEMO_TRAIN = str(CONFIGS / "darts_cnn_demo_train.yaml")
IMAGENET_TRAIN = str(CONFIGS / "darts_cnn_imagenet_mobile_train.yaml")
AUTODEEPLAB_SEARCH = str(CONFIGS / "autodeeplab_demo_search.yaml")
DARTS_RNN_DEMO = str(CONFIGS / "darts_rnn_demo_pipeline.yaml")


class _Reduce:
    """A pickled object that would run a command when unpickled (it must never be)."""

    def __reduce__(self):  # noqa: D105
        return (os.system, ("touch PWNED",))


def _cifar_dir(payload: object) -> Callable[[Path], str]:
    def make(d: Path) -> str:
        root = d / "cifar"
        (root / "cifar-10-batches-py").mkdir(parents=True)
        for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                     "batches.meta"):
            (root / "cifar-10-batches-py" / name).write_bytes(pickle.dumps(payload))
        return str(root)
    return make


def _torch_file(obj: object) -> Callable[[Path], str]:
    def make(d: Path) -> str:
        torch.save(obj, d / "ckpt.pt")
        return str(d / "ckpt.pt")
    return make


def _pipeline_file(text: str) -> Callable[[Path], str]:
    return file_maker("pipe.yaml", text)


def _empty_dir(d: Path) -> str:
    (d / "emptydir").mkdir()
    return str(d / "emptydir")


def _not_a_pipeline_dir(d: Path) -> str:
    (d / "mine" / "train").mkdir(parents=True)
    (d / "mine" / "train" / "notes.txt").write_text("keep me")
    return str(d / "mine")


def _file(d: Path) -> str:
    (d / "afile").write_text("x")
    return str(d / "afile")


BINARY = bytes(range(256)) * 4
GENOTYPE_WRONG_KIND = '{"format": "nasdeploy.genotype", "schema_version": 1, "kind": "teapot"}'

# (id, make input -> value substituted for {X} (or None), argv, words the one error line must contain)
CASES: list[tuple[str, Callable[[Path], str] | None, list[str], list[str]]] = [
    # genotypes
    ("genotype-unknown-name", None, ["genotypes", "show", "DARTS_V9"], ["DARTS_V9"]),
    ("genotype-malformed-json", file_maker("g.json", "{not json"), ["genotypes", "show", "{X}"], ["json"]),
    ("genotype-binary-file", file_maker("g.json", BINARY), ["genotypes", "show", "{X}"], ["g.json"]),
    ("genotype-missing-file", None, ["genotypes", "show", "missing.json"], ["missing"]),
    ("genotype-wrong-kind", file_maker("g.json", GENOTYPE_WRONG_KIND), ["genotypes", "show", "{X}"], ["teapot"]),
    ("draw-to-proc", None, ["genotypes", "draw", "DARTS_V2", "-o", "/proc/nasdeploy/x.svg"], ["/proc/nasdeploy"]),
    ("draw-parent-is-file", _file, ["genotypes", "draw", "DARTS_V2", "-o", "{X}/x.svg"], ["afile"]),
    ("draw-unknown-suffix", None, ["genotypes", "draw", "DARTS_V2", "-o", "cells.gif"], [".gif"]),
    # search / train configs
    ("search-config-missing", None, ["search", "--config", "nope.yaml", "--out", "run"], ["nope.yaml"]),
    ("search-config-binary", file_maker("c.yaml", BINARY), ["search", "--config", "{X}", "--out", "run"], ["c.yaml"]),
    ("search-config-bad-yaml", file_maker("c.yaml", "a: [1, 2\nb: ]"), ["search", "--config", "{X}", "--out", "run"], ["c.yaml"]),
    ("search-lr-nan", None, ["search", "--config", DEMO_SEARCH, "--out", "run", "search.lr=.nan"], ["search.lr"]),
    ("search-lr-inf", None, ["search", "--config", DEMO_SEARCH, "--out", "run", "search.lr=.inf"], ["search.lr"]),
    ("search-momentum-negative", None, ["search", "--config", DEMO_SEARCH, "--out", "run", "search.momentum=-1"], ["momentum"]),
    ("search-arch-betas", None, ["search", "--config", DEMO_SEARCH, "--out", "run", "search.arch_betas=[2,0.999]"], ["arch_betas"]),
    ("search-unknown-key", None, ["search", "--config", DEMO_SEARCH, "--out", "run", "search.learning_rate=1"], ["learning_rate"]),
    ("search-batch-not-int", None, ["search", "--config", DEMO_SEARCH, "--out", "run", "search.batch_size=abc"], ["batch_size"]),
    ("search-bad-override", None, ["search", "--config", DEMO_SEARCH, "--out", "run", "search.lr"], ["search.lr"]),
    ("search-out-in-proc", None, ["search", "--config", DEMO_SEARCH, "--out", "/proc/nasdeploy/run", "search.epochs=1"], ["/proc/nasdeploy"]),
    ("search-out-parent-is-file", _file, ["search", "--config", DEMO_SEARCH, "--out", "{X}/run", "search.epochs=1"], ["afile"]),
    ("search-no-config", None, ["search"], ["--config"]),
    ("search-unknown-space", file_maker("c.yaml", "space: nasnet\n"), ["search", "--config", "{X}", "--out", "run"], ["nasnet"]),
    ("autodeeplab-crop-below-stride-32", None, ["search", "--config", AUTODEEPLAB_SEARCH, "--out", "run", "data.crop_size=[16,16]",
                                        "data.image_size=[16,16]"], ["crop"]),
    ("train-unknown-genotype", None, ["train", "--genotype", "NOPE", "--config", DEMO_TRAIN, "--out", "run"], ["NOPE"]),
    ("train-genotype-binary", file_maker("g.json", BINARY), ["train", "--genotype", "{X}", "--config", DEMO_TRAIN, "--out", "run"], ["g.json"]),
    ("train-no-genotype", None, ["train", "--config", DEMO_TRAIN, "--out", "run"], ["genotype"]),
    ("train-zero-epochs", None, ["train", "--genotype", "DARTS_V2", "--config", DEMO_TRAIN, "--out", "run", "train.epochs=0"], ["epochs"]),
    ("train-rnn-genotype-for-cnn", None, ["train", "--genotype", "DARTS_V2_RNN", "--config", DEMO_TRAIN, "--out", "run"], ["rnn_cell"]),
    ("train-image-below-the-stride", None, ["train", "--genotype", "DARTS_V2", "--config", DEMO_TRAIN, "--out", "run",
                                            "data.image_size=2", "data.augment=none"], ["data.image_size", "stride"]),
    ("train-imagenet-image-below-the-stride", None, ["train", "--genotype", "DARTS_V2", "--config", IMAGENET_TRAIN,
                                                     "--out", "run", "data.dataset=demo", "data.image_size=24"],
     ["data.image_size", "32"]),
    ("search-2-layers", None, ["search", "--config", DEMO_SEARCH, "--out", "run", "model.layers=2"], ["model.layers"]),
    # datasets
    ("cifar-missing-dir", None, ["search", "--config", str(CONFIGS / "darts_cnn_cifar10_search.yaml"), "--data-dir",
                                 "no_such_dir", "--out", "run"], ["no_such_dir"]),
    ("cifar-empty-dir", _empty_dir, ["search", "--config", str(CONFIGS / "darts_cnn_cifar10_search.yaml"), "--data-dir", "{X}",
                                     "--out", "run"], ["emptydir"]),
    ("cifar-pickle-runs-code", _cifar_dir(_Reduce()), ["search", "--config", str(CONFIGS / "darts_cnn_cifar10_search.yaml"),
                                                        "--data-dir", "{X}", "--out", "run"], ["data_batch_1"]),
    # checkpoints
    ("export-checkpoint-missing", None, ["export", "DARTS_V2", "--net", "cifar", "--checkpoint", "nope.pt", "--out", "e"], ["nope.pt"]),
    ("export-checkpoint-garbage", file_maker("ckpt.pt", BINARY), ["export", "DARTS_V2", "--net", "cifar", "--checkpoint", "{X}",
                                                             "--out", "e"], ["ckpt.pt"]),
    ("export-checkpoint-wrong-content", _torch_file({"weights": torch.zeros(3)}), ["export", "DARTS_V2", "--net", "cifar",
                                                                                    "--checkpoint", "{X}", "--out", "e"], ["ckpt.pt"]),
    ("export-checkpoint-target-garbage", file_maker("ckpt.pt", BINARY), ["export", "{X}", "--out", "e"], ["ckpt.pt"]),
    # output paths and CLI values
    ("export-out-in-proc", None, ["export", "DARTS_V2", "--net", "cifar", "--channels", "4", "--layers", "2",
                                  "--out", "/proc/nasdeploy/e"], ["/proc/nasdeploy"]),
    ("export-out-parent-is-file", _file, ["export", "DARTS_V2", "--net", "cifar", "--channels", "4", "--layers", "2",
                                          "--out", "{X}/e"], ["afile"]),
    ("export-opset-99", None, ["export", "DARTS_V2", "--net", "cifar", "--channels", "4", "--layers", "2", "--opset", "99",
                               "--out", "e"], ["opset"]),
    ("export-int8-negative-max-drop", None, ["export", "DARTS_V2", "--net", "cifar", "--int8", "ort", "--dataset", "demo",
                                             "--max-drop", "-1", "--out", "e"], ["max_drop", "-1"]),
    ("export-int8-no-float-layers", None, ["export", "DARTS_V2", "--net", "cifar", "--int8", "ort", "--dataset", "demo",
                                           "--max-float-layers", "0", "--out", "e"], ["max_float_layers"]),
    ("export-qat-without-executorch", None, ["export", "DARTS_V2", "--net", "cifar", "--int8", "ort", "--dataset", "demo",
                                            "--qat-epochs", "2", "--out", "e"], ["--qat-epochs", "--int8 executorch"]),
    ("export-qat-negative-epochs", None, ["export", "DARTS_V2", "--net", "cifar", "--int8", "executorch", "--dataset", "demo",
                                         "--qat-epochs", "-1", "--out", "e"], ["qat_epochs", "-1"]),
    ("export-cnn-genotype-as-segmentation", None, ["export", "DARTS_V2", "--net", "segmentation", "--out", "e"], ["DARTS_V2"]),
    ("profile-json-in-proc", None, ["profile", "DARTS_V2", "--net", "cifar", "--channels", "4", "--layers", "2",
                                    "--json", "/proc/nasdeploy/p.json"], ["/proc/nasdeploy"]),
    ("profile-input-too-small", None, ["profile", "DARTS_V2", "--net", "imagenet", "--input-size", "8"], ["8"]),
    ("profile-input-size-garbage", None, ["profile", "DARTS_V2", "--input-size", "axb"], ["axb"]),
    ("build-ext-bad-arch", None, ["build-ext", "--arch", "abc"], ["abc"]),
    # pipeline
    ("pipeline-config-missing", None, ["pipeline", "nope.yaml", "--out", "run"], ["nope.yaml"]),
    ("pipeline-name-escapes", _pipeline_file("name: ../../x\nsearch: {}\ntrain: {}\n"), ["pipeline", "{X}"], ["../../x"]),
    ("pipeline-name-absolute", _pipeline_file("name: /tmp/x\nsearch: {}\ntrain: {}\n"), ["pipeline", "{X}"], ["/tmp/x"]),
    ("pipeline-unknown-section", _pipeline_file("name: p\nsearch: {}\ntrain: {}\nextras: {}\n"), ["pipeline", "{X}", "--out", "run"], ["extras"]),
    ("pipeline-unknown-space", _pipeline_file("name: p\nspace: nope\nsearch: {}\ntrain: {}\n"), ["pipeline", "{X}", "--out", "run"], ["nope"]),
    ("pipeline-unknown-stage", None, ["pipeline", "--out", "run", "--only", "deploy"], ["deploy"]),
    ("pipeline-only-report-empty-dir", _empty_dir, ["pipeline", "--out", "{X}", "--only", "report"], ["emptydir"]),
    ("pipeline-force-on-foreign-dir", _not_a_pipeline_dir, ["pipeline", "--out", "{X}", "--force", "train", "--only", "report"],
     ["pipeline_state.json"]),
    ("pipeline-qat-epochs-over-the-bound", None, ["pipeline", "--out", "run", "--set", "export.qat_epochs=1000"],
     ["export.qat_epochs", "1000"]),
    ("pipeline-qat-without-executorch", None, ["pipeline", "--out", "run", "--set", "export.qat_epochs=2",
                                              "--set", "export.int8=[ort]"], ["export.qat_epochs", "executorch"]),
    ("pipeline-rnn-bad-override", None, ["pipeline", DARTS_RNN_DEMO, "--out", "run", "--set", "search.search.lr=.nan"], ["lr"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_writes_nothing(case, tmp_path, monkeypatch, capsys):
    name, make, argv, words = case
    monkeypatch.chdir(tmp_path)
    value = make(tmp_path) if make is not None else None
    argv = [a.replace("{X}", value) if value is not None else a for a in argv]
    before = tree_snapshot(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, (name, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
    assert "Traceback" not in err
    for word in words:
        assert word.lower() in lines[0].lower(), (name, word, lines[0])
    assert tree_snapshot(tmp_path) == before, name
    assert not (tmp_path / "PWNED").exists()


def test_the_table_covers_every_command():
    from nasdeploy.cli.main import SUBCOMMANDS

    covered = {argv[0] for _, _, argv, _ in CASES}
    assert set(SUBCOMMANDS) <= covered and len(CASES) >= 40
