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

from nasdeploy.errors import ConfigError, NasDeployError
from nasdeploy.utils.limits import (
    CONFIG_BYTES, NESTING_DEPTH, YAML_ALIASES, YAML_NODES, brief, check_int64, read_text_limited,
)

T = TypeVar("T")

# Field metadata key: a float field that may hold NaN or +/-inf (none does today); every other float must be finite.
ALLOW_NONFINITE = "allow_nonfinite"


class _LimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader refusing, while it composes, a document too deep or whose aliases stand for too much.

    An alias counts as every node it stands for, so a "billion laughs" file is refused before anything is
    expanded; an alias inside the node it names (a structure that contains itself) is refused outright.
    """

    def __init__(self, stream: str, what: str) -> None:
        super().__init__(stream)
        self._what = what
        self._depth = self._aliases = self._nodes = 0
        self._weights: dict[int, int] = {}  # id(node) -> nodes it stands for, once composed

    def _count(self, nodes: int) -> None:
        self._nodes += nodes
        YAML_NODES.check(f"{self._what} with its aliases expanded", self._nodes)

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            anchor = self.peek_event().anchor
            self._aliases += 1
            YAML_ALIASES.check(f"{self._what} aliases", self._aliases)
            target = self.anchors.get(anchor)
            if target is not None:
                if id(target) not in self._weights:
                    raise ConfigError(f"{self._what}: alias *{anchor[:40]} is inside the node it names "
                                      f"(a structure that contains itself)")
                self._count(self._weights[id(target)])
            return super().compose_node(parent, index)
        self._depth += 1
        NESTING_DEPTH.check(f"{self._what} nesting", self._depth)
        start = self._nodes
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._count(1)
        self._weights[id(node)] = self._nodes - start
        return node


def parse_yaml(text: str, what: str) -> Any:
    """YAML text -> Python values within the limits on depth, aliases and expanded size (YAMLError if malformed)."""
    loader = _LimitedLoader(text, what)
    try:
        return loader.get_single_data()
    except NasDeployError:
        raise
    except ValueError as exc:  # an integer past Python's 4300-digit conversion limit
        raise ConfigError(f"{what}: {str(exc).splitlines()[0].split(';')[0]}") from None
    finally:
        loader.dispose()


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping, with a one-line error for a missing, unreadable, oversized or non-mapping file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = parse_yaml(read_text_limited(p, CONFIG_BYTES, "config file"), f"config file {p}")
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
            value = parse_yaml(raw, f"override '{key}'") if raw.strip() else None
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
        raise ConfigError(f"{label} must be a mapping, got {brief(data)}")
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
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: invalid value {brief(value)}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(repr, args))}, got {brief(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {brief(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, key, nonfinite) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key} must have {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, key, nonfinite) for a, v in zip(args, value))
    if origin in (list, dict):
        raise ConfigError(f"{key}: unsupported config type {tp}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {brief(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {brief(value)}")
        check_int64(key, value)
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads '3e-4' (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {brief(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            raise ConfigError(f"{key} must be a finite number, got {brief(value)}") from None
        if not nonfinite and not math.isfinite(number):
            raise ConfigError(f"{key} must be a finite number, got {number}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {brief(value)}")
        return value
    if tp is Any:
        return value
    raise ConfigError(f"{key}: unsupported config type {tp}")
