"""The limits module: every bound stated once, parsers bounded before they recurse or expand, estimates before building."""

from __future__ import annotations

import json
import os
import re
import stat
import time

import pytest
from helpers import bomb_png, laughs

from nasdeploy.errors import ConfigError, LimitError
from nasdeploy.utils import limits
from nasdeploy.utils.files import atomic_path, write_text_atomic
from nasdeploy.utils.runlock import run_directory_lock
from nasdeploy.utils.yamlconfig import parse_yaml


def test_billion_laughs_is_refused_while_read_and_never_printed():
    started = time.process_time()
    with pytest.raises(LimitError, match="yaml_nodes") as exc:
        parse_yaml(f"lr: {laughs()}", "c.yaml")
    assert "lol" not in str(exc.value)
    assert time.process_time() - started < 60  # generous: the refusal comes after ~100,000 nodes, not 10**9


def test_yaml_aliases_within_the_limits_load_and_a_self_containing_alias_is_refused():
    assert parse_yaml("a: &x [1, 2]\nb: *x\nc: {d: *x}\n", "c.yaml") == {"a": [1, 2], "b": [1, 2], "c": {"d": [1, 2]}}
    with pytest.raises(ConfigError, match="contains itself"):
        parse_yaml("a: &x [1, *x]\n", "c.yaml")
    many = "a: &x 1\nb: [" + ", ".join(["*x"] * 101) + "]\n"
    with pytest.raises(LimitError, match="yaml_aliases"):
        parse_yaml(many, "c.yaml")


def test_a_limit_is_raised_by_its_environment_variable_read_at_each_check(monkeypatch):
    text = "a: &x [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\nb: [" + ", ".join(["*x"] * 50) + "]\n"
    monkeypatch.setenv(limits.YAML_NODES.env, "100")
    with pytest.raises(LimitError, match=limits.YAML_NODES.env):
        parse_yaml(text, "c.yaml")
    monkeypatch.setenv(limits.YAML_NODES.env, "1000")
    assert len(parse_yaml(text, "c.yaml")["b"]) == 50
    monkeypatch.setenv(limits.YAML_NODES.env, "lots")
    with pytest.raises(LimitError, match="positive whole number"):
        limits.YAML_NODES.value()
    monkeypatch.setenv(limits.NESTING_DEPTH.env, "100000")  # a fixed limit ignores the environment
    assert limits.NESTING_DEPTH.value() == limits.NESTING_DEPTH.default


@pytest.mark.parametrize("text", ['{"a": "[[[[", "b": [[1], {"c": []}]}', '[1, "\\"]]]", [[2]]]', '"[[["', "[]",
                                  '{"k": "\\\\"}'])
def test_nesting_depth_matches_the_parsed_structure(text):
    def depth(value) -> int:
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        return 0 if children is None else 1 + max((depth(v) for v in children), default=0)

    assert limits.nesting_depth(text) == depth(json.loads(text))


def test_metadata_literals_are_bounded():
    scopes = limits.literal_eval_bounded("['', 'cells.0', 'cells.0.ops']", "name scopes")
    assert scopes == ["", "cells.0", "cells.0.ops"]
    for text, word in [("-" * 60_000 + "1", "too complex"), ("[" * 40 + "]" * 40, "nesting_depth"),
                       ("1" * 70_000, "metadata_chars")]:
        with pytest.raises(LimitError, match=word):
            limits.literal_eval_bounded(text, "metadata")


@pytest.mark.parametrize("channels, layers, size", [(8, 5, 32), (16, 8, 48)])
def test_network_estimate_bounds_the_built_networks_parameters_and_activations(channels, layers, size, one_thread):
    import torch

    from nasdeploy.nets import build_network

    model = build_network("DARTS_V2", net="cifar", channels=channels, layers=layers).eval()
    elements = [sum(p.numel() for p in model.parameters())]
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(lambda _m, _i, out: elements.append(out.numel())) for m in leaves]
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    measured = 4 * sum(elements)
    estimate = limits.estimate_network_bytes(limits.CellNetworkShape(channels, layers, (size, size)))
    assert measured <= estimate <= 3 * measured


def test_segmentation_estimate_follows_the_path_within_a_factor_of_two(one_thread):
    import torch

    from nasdeploy.genotypes import get_genotype
    from nasdeploy.nets import build_network

    path = get_genotype("AutoDeepLab").path
    for multiplier, size in [(4, (64, 64)), (12, (64, 128))]:
        model = build_network("AutoDeepLab", "segmentation", filter_multiplier=multiplier).eval()
        elements = [sum(p.numel() for p in model.parameters())]
        leaves = [m for m in model.modules() if not list(m.children())]
        hooks = [m.register_forward_hook(lambda _m, _i, out: elements.append(out.numel())) for m in leaves]
        with torch.no_grad():
            model(torch.randn(1, 3, *size))
        for hook in hooks:
            hook.remove()
        measured = 4 * sum(elements)
        estimate = limits.estimate_network_bytes(model.default_cfg.shape(size, nodes=5, multiplier=5, levels=path))
        assert measured / 2 <= estimate <= 3 * measured


def test_levels_default_to_the_darts_reduction_positions():
    from nasdeploy.nets.darts_cnn import reduction_indices

    for layers in (3, 8, 14, 20):
        levels = limits.CellNetworkShape(16, layers, (32, 32)).layer_levels()
        first, second = reduction_indices(layers)
        assert levels == tuple(int(i >= first) + int(i >= second) for i in range(layers))


def test_build_network_refuses_before_building(monkeypatch):
    from nasdeploy.nets import build_network, factory, get_net_config

    for net, genotype in [("cifar", "DARTS_V2"), ("imagenet", "DARTS_V2"), ("segmentation", "AutoDeepLab")]:
        model = build_network(genotype, net, channels=4 if net != "segmentation" else None)
        assert get_net_config(net).min_input_size == getattr(model, "min_input_size", 32)  # its total stride

    def never(*args, **kwargs):
        raise AssertionError("built")

    monkeypatch.setitem(factory._BUILDERS, "cifar", never)
    for kwargs, word in [({"channels": 10**6}, "channels"), ({"layers": 10**4}, "layers"),
                         ({"input_size": (100_000, 32)}, "input_side"), ({"input_size": (4000, 4000)}, "network_bytes"),
                         ({"num_classes": 10**9}, "network_bytes")]:
        with pytest.raises(LimitError, match=word):
            build_network("DARTS_V2", "cifar", **kwargs)


def test_json_files_are_read_within_their_limits(tmp_path, monkeypatch):
    (tmp_path / "ok.json").write_text('{"a": [1, 2]}')
    assert limits.read_json_limited(tmp_path / "ok.json", "record") == {"a": [1, 2]}
    (tmp_path / "deep.json").write_text("[" * 1000 + "]" * 1000)
    with pytest.raises(LimitError, match="nesting_depth"):
        limits.read_json_limited(tmp_path / "deep.json", "record")
    monkeypatch.setenv(limits.JSON_BYTES.env, "8")
    with pytest.raises(LimitError, match="json_bytes"):
        limits.read_json_limited(tmp_path / "ok.json", "record")


def test_network_check_refuses_huge_settings_and_passes_the_published_ones():
    limits.check_network("DARTS CIFAR", limits.CellNetworkShape(36, 20, (32, 32)))
    limits.check_network("DARTS ImageNet", limits.CellNetworkShape(48, 14, (224, 224), stem_stride=8, num_classes=1000))
    for shape, word in [(limits.CellNetworkShape(36, 20, (100_000, 100_000)), "input_side"),
                        (limits.CellNetworkShape(36, 20, (4096, 4096)), "network_bytes"),
                        (limits.CellNetworkShape(10**6, 20, (32, 32)), "channels"),
                        (limits.CellNetworkShape(36, 10**5, (32, 32)), "layers")]:
        with pytest.raises(LimitError, match=word):
            limits.check_network("net", shape)


def test_seeds_and_64_bit_integers():
    limits.check_int64("x", 2**63 - 1)
    limits.check_seed("seed", 2**32 - 1)
    for call, value in [(limits.check_int64, 2**63), (limits.check_int64, -(2**63) - 1), (limits.check_seed, -1),
                        (limits.check_seed, 2**32), (limits.check_seed, True)]:
        with pytest.raises(LimitError):
            call("v", value)


def test_image_within_the_pixel_limit_loads_and_a_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    from PIL import Image

    from nasdeploy.data.images import open_image

    Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "ok.png")
    assert open_image(tmp_path / "ok.png", "RGB").size == (40, 30)
    monkeypatch.setenv(limits.IMAGE_PIXELS.env, str(40 * 30 - 1))
    with pytest.raises(LimitError, match="image_pixels"):
        open_image(tmp_path / "ok.png", "RGB")
    monkeypatch.delenv(limits.IMAGE_PIXELS.env)
    bomb_png(tmp_path / "bomb.png")
    started = time.process_time()
    with pytest.raises(LimitError, match="image_pixels"):
        open_image(tmp_path / "bomb.png", "RGB")
    assert time.process_time() - started < 30  # refused from the header: 400 MP are never decoded


def test_temp_file_replaced_by_a_link_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    victim.chmod(0o600)
    with pytest.raises(OSError, match="symbolic link"):
        with atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"data")
            tmp.unlink()
            tmp.symlink_to(victim)  # someone swaps the temp file before it is published
    assert victim.read_text() == "keep me" and stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim.txt"]
    write_text_atomic(tmp_path / "out.txt", "fine")
    assert (tmp_path / "out.txt").read_text() == "fine" and not (tmp_path / "out.txt").is_symlink()


def test_lock_with_other_names_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "victim.txt").write_text("keep me")
    os.link(tmp_path / "victim.txt", tmp_path / "run" / ".lock")
    with pytest.raises(ConfigError, match="hard links"):
        with run_directory_lock(tmp_path / "run"):
            pass
    assert (tmp_path / "victim.txt").read_text() == "keep me"


def test_every_limit_states_its_reason_and_a_unique_name():
    names = [limit.name for limit in limits.LIMITS]
    assert len(set(names)) == len(names)
    for limit in limits.LIMITS:
        assert limit.default > 0 and len(limit.why) > 20 and re.fullmatch(r"[a-z_]+", limit.name)
