"""Config dataclasses from YAML: types checked at load time, dotted overrides, one-line errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from nasdeploy.errors import ConfigError
from nasdeploy.utils.yaml_config import apply_overrides, config_from_dict, config_to_dict, load_config


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
    assert config_from_dict(Outer, config_to_dict(cfg)) == cfg
    section = tmp_path / "s.yaml"
    section.write_text("outer_run:\n  name: inside\n", encoding="utf-8")
    assert load_config(Outer, section, section="outer_run").name == "inside"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"nam": "y"}, "unknown setting 'nam'; did you mean 'name'?"),
        ({"flag": "yes"}, "config.flag: expected true or false"),
        ({"inner": {"cap": 1.5}}, "config.inner.cap: expected an integer"),
        ({"inner": {"betas": [0.9]}}, "expected a list of 2 values"),
        ({"inner": 3}, "config.inner: expected a mapping"),
    ],
)
def test_type_and_key_errors_name_the_setting(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(Outer, data)


def test_override_and_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not of the form key.path=value"):
        apply_overrides({}, ["lr"])
    with pytest.raises(ConfigError, match="'name' is a value, not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(Outer, bad)
