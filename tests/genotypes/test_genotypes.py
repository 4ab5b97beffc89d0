"""Genotype model, registry, JSON round-trip and validation errors."""

from __future__ import annotations

import json

import pytest

from nasdeploy.errors import GenotypeError
from nasdeploy.genotypes import (
    CNNGenotype,
    RecurrentGenotype,
    genotype_from_json,
    genotype_to_dict,
    genotype_to_json,
    get_genotype,
    list_genotypes,
    load_genotype,
    resolve_genotype,
    save_genotype,
)


def _cnn_dict(**overrides):
    data = genotype_to_dict(get_genotype("DARTS_V2"))
    data.update(overrides)
    return data


def _load(data) -> object:
    return genotype_from_json(json.dumps(data))


@pytest.mark.parametrize("name", list_genotypes())
def test_json_round_trip_is_exact(name, tmp_path):
    g = get_genotype(name)
    path = save_genotype(g, tmp_path / f"{name}.json")
    again = load_genotype(path)
    assert again == g and again.name == name
    assert genotype_to_json(again) == path.read_text()


def test_registry_contents_and_alias():
    assert get_genotype("DARTS") == get_genotype("DARTS_V2")
    assert set(list_genotypes("cnn_cell")) == {"DARTS_V1", "DARTS_V2", "NASNet", "AmoebaNet", "PNAS"}
    nasnet = get_genotype("NASNet")
    assert nasnet.normal_steps == 5 and nasnet.reduce_concat == (4, 5, 6)
    amoeba = get_genotype("AmoebaNet")
    assert amoeba.normal_concat == (4, 5, 6) and amoeba.reduce_concat == (3, 4, 6)
    assert ("conv_7x1_1x7", 0) in amoeba.reduce
    pnas = get_genotype("PNAS")
    assert pnas.normal == pnas.reduce and len(pnas.normal) == 10
    assert isinstance(get_genotype("DARTS_V2_RNN"), RecurrentGenotype)


def test_file_carries_kind_and_schema_version():
    data = json.loads(genotype_to_json(get_genotype("DARTS_V2")))
    assert data["kind"] == "cnn_cell" and data["schema_version"] == 1 and data["format"] == "nasdeploy.genotype"


def test_resolve_accepts_name_file_and_object(tmp_path):
    g = get_genotype("PNAS")
    path = save_genotype(g, tmp_path / "g.json")
    assert resolve_genotype("PNAS") == g
    assert resolve_genotype(str(path)) == g
    assert resolve_genotype(g) is g


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["normal"].__setitem__(0, ["sep_conv_3x4", 0]), "unknown op 'sep_conv_3x4'; did you mean 'sep_conv_3x3'?"),
        (lambda d: d["normal"].__setitem__(2, ["sep_conv_3x3", 3]), "input index 3 refers to a later or missing node"),
        (lambda d: d["reduce"].__setitem__(0, ["max_pool_3x3", -1]), "input index -1 is negative"),
        (lambda d: d["normal"].pop(), "odd number of (op, input) pairs (7)"),
        (lambda d: d.__setitem__("normal_concat", [2, 3, 4, 6]), "concat names node 6, which does not exist"),
        (lambda d: d.__setitem__("normal_concat", [2, 2]), "names a node twice"),
        (lambda d: d["normal"].__setitem__(0, ["none", 0]), "op 'none' is search-only"),
        (lambda d: d.__setitem__("schema_version", 99), "unsupported genotype schema_version 99"),
        (lambda d: d.__setitem__("kind", "transformer"), "unknown genotype kind 'transformer'"),
        (lambda d: d.pop("reduce"), "missing field 'reduce'"),
    ],
)
def test_bad_genotype_errors_name_the_problem(mutate, message):
    data = _cnn_dict()
    mutate(data)
    with pytest.raises(GenotypeError) as info:
        _load(data)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_wrong_kind_is_reported():
    with pytest.raises(GenotypeError, match="wrong genotype kind: expected 'cnn_cell', got 'rnn_cell'"):
        genotype_from_json(genotype_to_json(get_genotype("DARTS_V2_RNN")), expected_kind="cnn_cell")
    with pytest.raises(GenotypeError, match="'DARTS_V2' is a 'cnn_cell' genotype, expected 'rnn_cell'"):
        get_genotype("DARTS_V2", expected_kind="rnn_cell")


def test_malformed_json_is_reported(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"kind": "cnn_cell", ')
    with pytest.raises(GenotypeError, match=r"broken.json: malformed JSON"):
        load_genotype(path)


def test_unknown_registry_name_suggests_nearest():
    with pytest.raises(GenotypeError, match="unknown genotype name 'DARTS_V3'; did you mean 'DARTS_V2'"):
        get_genotype("DARTS_V3")


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(GenotypeError, match="genotype file not found"):
        resolve_genotype(str(tmp_path / "nope.json"))


def test_recurrent_validation():
    good = get_genotype("DARTS_V1_RNN")
    data = genotype_to_dict(good)
    data["recurrent"][2] = ["tanh", 5]
    with pytest.raises(GenotypeError, match="node 3: predecessor 5 refers to a later or missing node"):
        _load(data)
    data = genotype_to_dict(good)
    data["recurrent"][0] = ["tanhh", 0]
    with pytest.raises(GenotypeError, match="did you mean 'tanh'"):
        _load(data)


def test_genotypes_are_hashable_values():
    a = get_genotype("DARTS_V2")
    b = CNNGenotype(a.normal, a.normal_concat, a.reduce, a.reduce_concat, name="other")
    assert a == b and hash(a) == hash(b)
