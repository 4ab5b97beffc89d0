"""Config files: YAML -> nested frozen dataclasses, type-checked at load, with dotted CLI overrides."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from nasdeploy.errors import ConfigError

T = TypeVar("T")

# Field metadata key: a float field that may hold NaN or +/-inf (none does today); every other float must be finite.
ALLOW_NONFINITE = "allow_nonfinite"


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping, with a one-line error for a missing, unreadable or non-mapping file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not a YAML config file: {p} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"config file {p} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of sections, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of `data` with each 'section.key=value' set (value parsed as YAML: 2, 0.1, true, [1, 2])."""
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{item}' must look like section.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return out


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass `cls` from a mapping, checking keys and value types (nested dataclasses recurse)."""
    label = where or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    names = list(fields)
    if not where and "space" not in names:  # a top-level `space:` names the search space, not a field
        data = {k: v for k, v in data.items() if k != "space"}
    for key in data:
        if key not in names:
            hint = difflib.get_close_matches(str(key), names, n=1)
            extra = (f"; did you mean '{_join(where, hint[0])}'?" if hint else "") + f" (valid: {', '.join(names)})"
            raise ConfigError(f"unknown config key '{_join(where, str(key))}'{extra}")
    kwargs = {key: _coerce(hints[key], value, _join(where, key), fields[key].metadata.get(ALLOW_NONFINITE, False))
              for key, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{label}: {exc}") from None


def load_config(cls: type[T], path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> T:
    """Read YAML (None: the defaults), apply dotted overrides, validate into `cls`."""
    data = load_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    if path is None:
        return from_dict(cls, data)
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def to_dict(obj: Any) -> Any:
    """Plain dicts/lists of a (nested) dataclass: JSON/YAML-able and weights_only-loadable."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def dump_yaml(obj: Any) -> str:
    """YAML text of a (nested) dataclass, keys in declaration order."""
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=None)


def diff_dicts(a: Any, b: Any, where: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in list(a) + [k for k in b if k not in a]:
            out += diff_dicts(a.get(key), b.get(key), _join(where, str(key)))
        return out
    return [] if a == b else [where]


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _coerce(tp: Any, value: Any, key: str, nonfinite: bool = False) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(option, value, key, nonfinite)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, key, nonfinite) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key} must have {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, key, nonfinite) for a, v in zip(args, value))
    if origin in (list, dict):
        raise ConfigError(f"{key}: unsupported config type {tp}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads '3e-4' (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            raise ConfigError(f"{key} must be a finite number, got {value}") from None
        if not nonfinite and not math.isfinite(number):
            raise ConfigError(f"{key} must be a finite number, got {number}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise ConfigError(f"{key}: unsupported config type {tp}")
