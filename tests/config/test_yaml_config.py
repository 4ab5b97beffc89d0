"""Config dataclasses from YAML (nasdeploy.utils.yamlconfig): types checked at load, dotted overrides, one-line errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from nasdeploy.errors import ConfigError
from nasdeploy.utils.yamlconfig import apply_overrides, from_dict, load_config, to_dict


@dataclass(frozen=True)
class Inner:
    lr: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    cap: int | None = None


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    flag: bool = False
    inner: Inner = field(default_factory=Inner)


def test_nested_load_with_overrides_and_coercion(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: run\ninner:\n  lr: 1\n  betas: [0.5, 0.9]\n", encoding="utf-8")
    cfg = load_config(Outer, path, ["inner.cap=3", "flag=true"])
    assert cfg == Outer("run", True, Inner(1.0, (0.5, 0.9), 3))
    assert isinstance(cfg.inner.lr, float)
    assert from_dict(Outer, to_dict(cfg)) == cfg
    assert to_dict(cfg)["inner"]["betas"] == [0.5, 0.9]
    assert load_config(Outer, None, ["name=y"]) == Outer(name="y")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"nam": "y"}, r"unknown config key 'nam'; did you mean 'name'\? \(valid: name, flag, inner\)"),
        ({"flag": "yes"}, "flag must be true or false"),
        ({"inner": {"cap": 1.5}}, "inner.cap must be an integer"),
        ({"inner": {"lr": True}}, "inner.lr must be a number"),
        ({"inner": {"betas": [0.9]}}, "inner.betas must have 2 values"),
        ({"inner": 3}, "inner must be a mapping"),
    ],
)
def test_type_and_key_errors_name_the_setting(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_override_and_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        apply_overrides({}, ["lr"])
    with pytest.raises(ConfigError, match="'name' is a value, not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line"):
        load_config(Outer, bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("flag: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"wrong\.yaml: flag must be true or false"):
        load_config(Outer, wrong)
