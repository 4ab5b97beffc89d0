"""Auto-DeepLab genotype kind: validation, JSON round trip, registry entry, space sizes."""

from __future__ import annotations

import itertools
import json

import pytest

from nasdeploy.errors import GenotypeError
from nasdeploy.genotypes import (
    AutoDeepLabGenotype,
    genotype_from_dict,
    genotype_to_dict,
    get_genotype,
    list_genotypes,
    load_genotype,
    make_autodeeplab_genotype,
    resolve_genotype,
    save_genotype,
)
from nasdeploy.genotypes.autodeeplab import count_cells, count_distinct_cells, count_network_paths
from nasdeploy.genotypes.describe import describe_genotype


def test_published_architecture_in_registry():
    g = get_genotype("AutoDeepLab")
    assert isinstance(g, AutoDeepLabGenotype) and "AutoDeepLab" in list_genotypes("autodeeplab")
    assert g.path == (0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1)
    assert g.strides == (4, 4, 4, 8, 16, 8, 16, 16, 32, 32, 16, 8)
    # The released model (hnasnet) lists ops with hiddenstate indices where 0 = H^{l-1}, 1 = H^{l-2};
    # our cells use 0 = H^{l-2}, 1 = H^{l-1} (the CNN genotype convention): swap 0 <-> 1 to compare.
    released_ops = ["atrous_5x5", "separable_3x3_2", "separable_3x3_2", "atrous_3x3", "separable_3x3_2",
                    "separable_3x3_2", "separable_5x5_2", "separable_5x5_2", "separable_5x5_2", "atrous_5x5"]
    released_idx = [1, 0, 1, 0, 3, 1, 4, 2, 3, 5]
    rename = {"atrous_5x5": "atrous_conv_5x5", "atrous_3x3": "atrous_conv_3x3",
              "separable_3x3_2": "sep_conv_3x3", "separable_5x5_2": "sep_conv_5x5"}
    swap = {0: 1, 1: 0}
    assert g.cell == tuple((rename[o], swap.get(i, i)) for o, i in zip(released_ops, released_idx))


def test_json_round_trip(tmp_path):
    g = get_genotype("AutoDeepLab")
    path = save_genotype(g, tmp_path / "autodeeplab.json")
    data = json.loads(path.read_text())
    assert data["kind"] == "autodeeplab" and data["schema_version"] == 1
    back = load_genotype(path, expected_kind="autodeeplab")
    assert back == g and back.name == "AutoDeepLab"
    assert resolve_genotype(str(path)) == g
    assert genotype_from_dict(genotype_to_dict(g)) == g


@pytest.mark.parametrize(
    "cell, path, message",
    [
        ([["sep_conv_3x3", 0]], [0], "odd number of"),
        ([["dil_conv_3x3", 0], ["sep_conv_3x3", 1]], [0], "unknown op 'dil_conv_3x3'"),
        ([["none", 0], ["sep_conv_3x3", 1]], [0], "search-only"),
        ([["sep_conv_3x3", 0], ["sep_conv_3x3", 2]], [0], "block 2 can read states 0..1"),
        ([["sep_conv_3x3", 0], ["sep_conv_3x3", 1]], [2], "jumps from the stride-4 stem to level 2"),
        ([["sep_conv_3x3", 0], ["sep_conv_3x3", 1]], [0, 1, 3], "jumps from level 1 at layer 2 to level 3"),
        ([["sep_conv_3x3", 0], ["sep_conv_3x3", 1]], [0, 1, 2, 3, 4], "out of range 0..3"),
        ([["sep_conv_3x3", 0], ["sep_conv_3x3", 1]], [], "is empty"),
        ([["sep_conv_3x3", 0], ["sep_conv_3x3", 1]], [0, "1"], "is not an integer"),
    ],
)
def test_invalid_genotypes_give_one_line_errors(cell, path, message):
    with pytest.raises(GenotypeError, match=message) as info:
        genotype_from_dict({"schema_version": 1, "kind": "autodeeplab", "cell": cell, "path": path})
    assert "\n" not in str(info.value)


def test_missing_field_and_wrong_kind():
    with pytest.raises(GenotypeError, match="missing field 'path'"):
        genotype_from_dict({"schema_version": 1, "kind": "autodeeplab", "cell": []})
    with pytest.raises(GenotypeError, match="expected 'cnn_cell'"):
        get_genotype("AutoDeepLab", expected_kind="cnn_cell")


def _brute_force_paths(layers: int) -> int:
    total = 0
    for moves in itertools.product((-1, 0, 1), repeat=layers):
        level, ok = 0, True
        for m in moves:
            level += m
            ok = ok and 0 <= level <= 3
        total += ok
    return total


@pytest.mark.parametrize("layers", [1, 2, 3, 5, 8])
def test_path_count_matches_enumeration(layers):
    assert count_network_paths(layers) == _brute_force_paths(layers)


def test_search_space_sizes():
    # The paper's "5.6e14 cells": per block (inputs x 8 ops)^2 ordered choices.
    assert f"{count_cells():.1e}" == "5.6e+14"
    assert count_distinct_cells() == 2700 * 49**5
    # Paths from the stride-4 stem with 12 free layers: 75025. The paper's "2.9e4" equals the count
    # for 11 free layers (28657), i.e. with the first cell layer fixed at stride 4.
    assert count_network_paths(12) == 75025 and count_network_paths(11) == 28657


def test_describe_names_inputs():
    text = describe_genotype(make_autodeeplab_genotype([["sep_conv_3x3", 0], ["skip_connect", 1]], [0, 1], name="tiny"))
    # The block is numbered by its state index, as the JSON's input indices number it.
    assert "block 2 = sep_conv_3x3(H^{l-2}) + skip_connect(H^{l-1})" in text and "[4, 8]" in text
