"""Every numeric config field: NaN and infinity refused at load, ranges checked, one-line errors naming the key."""

from __future__ import annotations

import dataclasses
import math
import types
import typing

import pytest

from nasdeploy.cli.main import main
from nasdeploy.data.segmentation import SegDataConfig
from nasdeploy.errors import ConfigError, LimitError
from nasdeploy.config.autodeeplab import (
    AutoDeepLabSearchConfig,
    AutoDeepLabSearchOptions,
    AutoDeepLabTrainConfig,
    AutoDeepLabTrainOptions,
)
from nasdeploy.config.darts_cnn import DartsCnnSearchConfig, DartsCnnTrainConfig
from nasdeploy.config.darts_rnn import DartsRnnSearchConfig, DartsRnnTrainConfig
from nasdeploy.utils.yamlconfig import ALLOW_NONFINITE, apply_overrides, from_dict, load_config

ROOTS = [DartsCnnSearchConfig, DartsCnnTrainConfig, DartsRnnSearchConfig, DartsRnnTrainConfig, AutoDeepLabSearchConfig, AutoDeepLabTrainConfig]


def _float_keys(cls: type, where: str = "") -> list[tuple[str, int | None]]:
    """(dotted key, None for a float or the length of a float tuple) of every float field, recursively."""
    out: list[tuple[str, int | None]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        tp = hints[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):  # Optional[X] -> X
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        args = typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            out += _float_keys(tp, key)
        elif f.metadata.get(ALLOW_NONFINITE):
            continue
        elif tp is float:
            out.append((key, None))
        elif typing.get_origin(tp) is tuple and float in args:
            out.append((key, 3 if Ellipsis in args else len(args)))
    return out


def _nested(key: str, value: object) -> dict:
    head, _, rest = key.partition(".")
    return {head: _nested(rest, value) if rest else value}


@pytest.mark.parametrize("root", ROOTS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "nan", "-inf", "Infinity"])
def test_every_float_field_refuses_non_finite(root, bad):
    keys = _float_keys(root)
    assert len(keys) >= 3, keys
    for key, n in keys:
        value = bad if n is None else [bad] + [0.5] * (n - 1)  # tuples: one bad entry is enough
        with pytest.raises(ConfigError) as err:
            from_dict(root, _nested(key, value))
        msg = str(err.value)
        assert msg.startswith(f"{key} must be a finite number, got "), (key, msg)
        assert "\n" not in msg


def test_float_keys_cover_the_tuples():
    keys = dict(_float_keys(DartsCnnSearchConfig))
    assert keys["search.arch_betas"] == 2 and keys["search.lr"] is None and keys["data.mean"] == 3


@pytest.mark.parametrize("override, message", [
    ("search.momentum=-1", "search.momentum must be in [0, 1), got -1.0"),
    ("search.momentum=1", "search.momentum must be in [0, 1), got 1.0"),
    ("search.arch_betas=[2,0.999]", "search.arch_betas must hold two values in [0, 1), got [2.0, 0.999] (value 1)"),
    ("search.arch_betas=[0.5]", "search.arch_betas must have 2 values, got 1"),
    ("search.lr=.nan", "search.lr must be a finite number, got nan"),
    ("search.lr=.inf", "search.lr must be a finite number, got inf"),
    ("search.lr=-.inf", "search.lr must be a finite number, got -inf"),
    ("search.lr=nan", "search.lr must be a finite number, got nan"),
    ("search.lr=0", "search.lr must be positive"),
    ("search.weight_decay=-1e-4", "search.weight_decay must be >= 0, got -0.0001"),
    ("search.arch_weight_decay=-1", "search.arch_weight_decay must be >= 0, got -1.0"),
    ("search.grad_clip=0", "search.grad_clip must be positive, got 0.0"),
    ("search.train_portion=1", "search.train_portion must be strictly between 0 and 1"),
    ("model.alpha_init_scale=0", "model.alpha_init_scale must be positive, got 0.0"),
    ("model.recompute_op_bodies=3", "model.recompute_op_bodies"),
    ("search.lr=1e999", "search.lr must be a finite number, got inf"),
])
def test_darts_search_values(override, message):
    with pytest.raises(ConfigError) as err:
        from_dict(DartsCnnSearchConfig, apply_overrides({"data": {"dataset": "demo"}}, [override]))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("override, message", [
    ("train.momentum=1.5", "train.momentum must be in [0, 1), got 1.5"),
    ("train.weight_decay=-1", "train.weight_decay must be >= 0, got -1.0"),
    ("train.grad_clip=-1", "train.grad_clip must be positive, got -1.0"),
    ("train.lr=.nan", "train.lr must be a finite number, got nan"),
    ("train.drop_path_prob=1", "train.drop_path_prob must be in [0, 1), got 1.0"),
    ("train.auxiliary_weight=-0.1", "train.auxiliary_weight must be >= 0, got -0.1"),
])
def test_darts_train_values(override, message):
    with pytest.raises(ConfigError) as err:
        from_dict(DartsCnnTrainConfig, apply_overrides({"data": {"dataset": "demo"}}, [override]))
    assert message in str(err.value)


@pytest.mark.parametrize("cls, override, message", [
    (DartsRnnSearchConfig, "search.arch_betas=[0.9,1]", "search.arch_betas must hold two values in [0, 1)"),
    (DartsRnnSearchConfig, "search.weight_decay=-1", "search.weight_decay must be >= 0"),
    (DartsRnnSearchConfig, "model.dropoutx=1", "model.dropoutx must be a probability in [0, 1)"),
    (DartsRnnSearchConfig, "search.lr=.inf", "search.lr must be a finite number, got inf"),
    (DartsRnnTrainConfig, "train.beta_tar=-1", "train.beta_tar must be >= 0"),
    (DartsRnnTrainConfig, "model.dropouth=.nan", "model.dropouth must be a finite number, got nan"),
])
def test_rnn_values(cls, override, message):
    with pytest.raises(ConfigError, match="^" + message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(cls, None, [override])


@pytest.mark.parametrize("section, values, message", [
    ("search", {"momentum": -0.1}, "search.momentum must be in [0, 1), got -0.1"),
    ("search", {"arch_betas": [0.9, 1.0]}, "search.arch_betas must hold two values in [0, 1)"),
    ("search", {"grad_clip": 0.0}, "search.grad_clip must be positive"),
    ("search", {"weight_decay": -1.0}, "search.weight_decay must be >= 0"),
    ("search", {"lr_min": 1.0}, "lr_min in [0, lr]"),
    ("search", {"lr": math.nan}, "search.lr must be a finite number, got nan"),
    ("data", {"crop_size": [16, 16]}, "data.crop_size [16, 16] is smaller than Auto-DeepLab's output stride 32"),
    ("data", {"crop_size": None, "image_size": [24, 64]}, "data.image_size [24, 64] is smaller than"),
    ("data", {"downsample": 0.0}, "data.downsample must be positive"),
    ("data", {"scale_range": [1.5, 1.0]}, "data.scale_range must satisfy 0 < min <= max"),
])
def test_autodeeplab_search_values(section, values, message):
    with pytest.raises(ConfigError) as err:
        from_dict(AutoDeepLabSearchConfig, {section: values})
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("section, values, message", [
    ("train", {"momentum": 1.0}, "train.momentum must be in [0, 1)"),
    ("train", {"weight_decay": -1.0}, "train.weight_decay must be >= 0"),
    ("train", {"grad_clip": -1.0}, "train.grad_clip must be >= 0"),
    ("train", {"poly_power": 0.0}, "train.poly_power must be positive"),
    ("net", {"dropout": 1.0}, "net.dropout must be in [0, 1)"),
    ("net", {"dropout": math.inf}, "net.dropout must be a finite number, got inf"),
    ("data", {"crop_size": [31, 64]}, "data.crop_size [31, 64] is smaller than Auto-DeepLab's output stride 32"),
])
def test_autodeeplab_train_values(section, values, message):
    with pytest.raises(ConfigError) as err:
        from_dict(AutoDeepLabTrainConfig, {section: values})
    assert message in str(err.value)


@pytest.mark.parametrize("root, overrides, message", [
    (DartsCnnSearchConfig, ["search.seed=-1"], "search.seed must be a whole number in 0 .. 4294967295"),
    (DartsCnnTrainConfig, [f"train.seed={2 ** 32}"], "train.seed must be a whole number in 0 .. 4294967295"),
    (DartsRnnSearchConfig, ["search.seed=-3"], "search.seed must be a whole number"),
    (DartsRnnTrainConfig, [f"train.seed={2 ** 40}"], "train.seed must be a whole number"),
    (AutoDeepLabSearchConfig, ["search.seed=-1"], "search.seed must be a whole number"),
    (AutoDeepLabTrainConfig, [f"train.seed={2 ** 33}"], "train.seed must be a whole number"),
    (DartsCnnSearchConfig, ["model.layers=2"], "model.layers must be >= 3, got 2: the reduction cells sit at"),
    (DartsCnnTrainConfig, ["data.image_size=3"], "data.image_size 3 is below the cifar network's total stride 4"),
    (DartsCnnTrainConfig, ["model.net=imagenet", "data.image_size=31"], "below the imagenet network's total stride 32"),
    (DartsCnnTrainConfig, ["model.net=segmentation"], "model.net must be a DARTS CNN network family"),
    (DartsCnnTrainConfig, ["model.net=mobile"], "unknown network 'mobile'"),
    (DartsCnnSearchConfig, ["model.channels=100000"], "model (the search supernet) channels: 100,000 channels"),
    (DartsCnnSearchConfig, ["model.layers=100000"], "(layers); set NASDEPLOY_MAX_LAYERS"),
    (DartsCnnSearchConfig, ["data.image_size=4096"], "(network_bytes)"),
    (DartsCnnTrainConfig, ["model.channels=2048", "model.layers=100"], "model estimated memory"),
    (AutoDeepLabSearchConfig, ["supernet.filter_multiplier=64", "data.crop_size=[2048,2048]",
                               "data.image_size=[2048,2048]"], "supernet estimated memory"),
    (DartsRnnSearchConfig, ["model.nhid=100000", "model.emsize=100000"], "model.nhid: 100,000 channels"),
    (DartsRnnTrainConfig, ["model.ntokens=1000000000"], "the language model's estimated memory"),
])
def test_values_that_cannot_work_or_fit_are_refused_at_load(root, overrides, message):
    with pytest.raises((ConfigError, LimitError)) as err:  # LimitError: a stated limit (seed range, sizes)
        load_config(root, None, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_smallest_working_values_load():
    load_config(DartsCnnSearchConfig, None, ["model.layers=3", "data.image_size=1"])  # the supernet pads any size
    load_config(DartsCnnTrainConfig, None, ["model.layers=1", "data.image_size=4"])
    load_config(DartsCnnTrainConfig, None, ["model.net=imagenet", "data.image_size=32"])
    load_config(DartsCnnSearchConfig, None, ["search.seed=0"])
    load_config(DartsCnnSearchConfig, None, [f"search.seed={2 ** 32 - 1}"])


def test_validators_refuse_nan_without_the_loader():
    with pytest.raises(ConfigError, match="search.grad_clip must be positive, got nan"):
        AutoDeepLabSearchOptions(grad_clip=math.nan)
    with pytest.raises(ConfigError, match="train.weight_decay must be >= 0, got nan"):
        AutoDeepLabTrainOptions(weight_decay=math.nan)


def test_defaults_and_shipped_sizes_still_validate():
    for root in ROOTS:
        from_dict(root, {})
    SegDataConfig(crop_size=(32, 32), image_size=(32, 32))
    SegDataConfig(dataset="cityscapes", root="/x", crop_size=None)  # full images: sizes known only at load


def test_cli_names_the_key(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["search", "--config", "configs/darts_cnn_demo_search.yaml", "--out", str(tmp_path / "r"), "search.lr=.nan"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1
    assert err[0].startswith("error: ") and "search.lr must be a finite number, got nan" in err[0]
    assert not (tmp_path / "r").exists()
