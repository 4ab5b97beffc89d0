"""Versioned JSON load/save of genotypes (a `kind` and a `schema_version` in every file)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from nasdeploy.errors import GenotypeError, LimitError
from nasdeploy.genotypes.model import SCHEMA_VERSION, CNNGenotype, Genotype, RecurrentGenotype
from nasdeploy.genotypes.validate import validate_cnn_genotype, validate_recurrent_genotype
from nasdeploy.utils.files import write_text_atomic
from nasdeploy.utils.limits import GENOTYPE_BYTES, GENOTYPE_NODES, brief, loads_json, read_text_limited

FORMAT_TAG = "nasdeploy.genotype"


def _edges_to_json(edges: tuple[tuple[str, int], ...]) -> list[list[Any]]:
    return [[op, index] for op, index in edges]


def _edges_from_json(where: str, value: Any) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, list):
        raise GenotypeError(f"{where}: expected a list of [op_name, input_index] pairs, got {type(value).__name__}")
    edges = []
    for k, pair in enumerate(value):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise GenotypeError(f"{where} pair {k}: expected [op_name, input_index], got {brief(pair)}")
        edges.append((pair[0], pair[1]))
    return tuple(edges)


def _int_list(where: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise GenotypeError(f"{where}: expected a list of node indices, got {brief(value)}")
    return tuple(value)


def _require(data: dict[str, Any], key: str, kind: str) -> Any:
    if key not in data:
        raise GenotypeError(f"{kind} genotype: missing field '{key}'")
    return data[key]


def _cnn_to_dict(g: CNNGenotype) -> dict[str, Any]:
    return {
        "normal": _edges_to_json(g.normal),
        "normal_concat": list(g.normal_concat),
        "reduce": _edges_to_json(g.reduce),
        "reduce_concat": list(g.reduce_concat),
    }


def _cnn_from_dict(data: dict[str, Any], name: str | None) -> CNNGenotype:
    kind = CNNGenotype.kind
    genotype = CNNGenotype(
        normal=_edges_from_json("normal cell", _require(data, "normal", kind)),
        normal_concat=_int_list("normal_concat", _require(data, "normal_concat", kind)),
        reduce=_edges_from_json("reduce cell", _require(data, "reduce", kind)),
        reduce_concat=_int_list("reduce_concat", _require(data, "reduce_concat", kind)),
        name=name,
    )
    return validate_cnn_genotype(genotype)


def _rnn_to_dict(g: RecurrentGenotype) -> dict[str, Any]:
    return {"recurrent": _edges_to_json(g.recurrent), "concat": list(g.concat)}


def _rnn_from_dict(data: dict[str, Any], name: str | None) -> RecurrentGenotype:
    kind = RecurrentGenotype.kind
    genotype = RecurrentGenotype(
        recurrent=_edges_from_json("recurrent cell", _require(data, "recurrent", kind)),
        concat=_int_list("concat", _require(data, "concat", kind)),
        name=name,
    )
    return validate_recurrent_genotype(genotype)


# kind -> (class, to_dict, from_dict). New genotype kinds register here.
_KINDS: dict[str, tuple[type, Callable[[Any], dict[str, Any]], Callable[[dict[str, Any], str | None], Any]]] = {
    CNNGenotype.kind: (CNNGenotype, _cnn_to_dict, _cnn_from_dict),
    RecurrentGenotype.kind: (RecurrentGenotype, _rnn_to_dict, _rnn_from_dict),
}


def register_genotype_kind(
    cls: type, to_dict: Callable[[Any], dict[str, Any]], from_dict: Callable[[dict[str, Any], str | None], Any]
) -> None:
    """Register the JSON codec of a genotype kind (its class must have a `kind` class attribute)."""
    _KINDS[cls.kind] = (cls, to_dict, from_dict)


def genotype_kinds() -> tuple[str, ...]:
    """The genotype kinds this version can read and write."""
    return tuple(_KINDS)


def genotype_to_dict(genotype: Genotype, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-ready dict of a genotype, with format tag, schema version and kind."""
    entry = _KINDS.get(getattr(genotype, "kind", None))
    if entry is None:
        raise GenotypeError(f"cannot serialise object of type {type(genotype).__name__}: not a genotype")
    out: dict[str, Any] = {"format": FORMAT_TAG, "schema_version": SCHEMA_VERSION, "kind": genotype.kind}
    if genotype.name:
        out["name"] = genotype.name
    out.update(entry[1](genotype))
    if meta:
        out["meta"] = meta
    return out


def genotype_from_dict(data: Any, expected_kind: str | None = None) -> Genotype:
    """Build and validate a genotype from its JSON dict."""
    if not isinstance(data, dict):
        raise GenotypeError(f"genotype JSON must be an object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version is None:
        raise GenotypeError("genotype JSON has no 'schema_version' field")
    if version != SCHEMA_VERSION:
        raise GenotypeError(
            f"unsupported genotype schema_version {brief(version)}; this nasdeploy reads version {SCHEMA_VERSION}"
        )
    kind = data.get("kind")
    if kind not in _KINDS:
        raise GenotypeError(f"unknown genotype kind {brief(kind)}; known kinds: {', '.join(_KINDS)}")
    if expected_kind is not None and kind != expected_kind:
        raise GenotypeError(f"wrong genotype kind: expected '{expected_kind}', got '{kind}'")
    for key, value in data.items():  # bound every cell's size before any object is built from it
        if key != "meta" and isinstance(value, list):
            nodes = -(-len(value) // 2)
            GENOTYPE_NODES.check(f"genotype field '{key}' ({len(value):,} entries, up to 2 per node)", nodes)
    name = data.get("name")
    return _KINDS[kind][2](data, name if isinstance(name, str) else None)


def genotype_to_json(genotype: Genotype, meta: dict[str, Any] | None = None) -> str:
    """The genotype as a JSON string."""
    return json.dumps(genotype_to_dict(genotype, meta), indent=2) + "\n"


def genotype_from_json(text: str, expected_kind: str | None = None, source: str = "genotype JSON") -> Genotype:
    """Parse a genotype from a JSON string."""
    GENOTYPE_BYTES.check(source, len(text))
    try:
        data = loads_json(text, source)
    except json.JSONDecodeError as exc:
        raise GenotypeError(f"{source}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except LimitError:
        raise
    except ValueError as exc:  # a number past Python's 4300-digit conversion limit
        raise GenotypeError(f"{source}: malformed JSON ({str(exc).split(';')[0]})") from None
    return genotype_from_dict(data, expected_kind)


def save_genotype(genotype: Genotype, path: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> Path:
    """Write a genotype JSON file atomically."""
    return write_text_atomic(path, genotype_to_json(genotype, meta))


def load_genotype(path: str | os.PathLike[str], expected_kind: str | None = None) -> Genotype:
    """Read and validate a genotype JSON file."""
    p = Path(path)
    if not p.is_file():
        raise GenotypeError(f"genotype file not found: {p}")
    try:
        text = read_text_limited(p, GENOTYPE_BYTES, "genotype file")
    except UnicodeDecodeError as exc:
        raise GenotypeError(f"not a genotype JSON file: {p} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise GenotypeError(f"cannot read genotype file {p}: {exc.strerror or exc}") from None
    return genotype_from_json(text, expected_kind, source=str(p))
