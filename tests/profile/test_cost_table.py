"""Cost tables: per-position MACs reproduce the profiler exactly; latency sums track end-to-end timing; cache; CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from nasdeploy.cli.main import cli
from nasdeploy.errors import ConfigError, NasDeployError
from nasdeploy.genotypes import CNN_PRIMITIVES, resolve_genotype
from nasdeploy.nets import build_network
from nasdeploy.profile import LatencyConfig, model_complexity, profile_model
from nasdeploy.profile import cost_table_build as ctb
from nasdeploy.profile.cost_table import load_cost_table, save_cost_table
from nasdeploy.spaces.darts_cnn_derive import derive_genotype

SMALL = dict(net="cifar", channels=8, layers=5)


@pytest.fixture(scope="module")
def imagenet_macs():
    return ctb.build_cost_table("darts_cnn", None, net="imagenet")


@pytest.fixture(scope="module")
def small_macs():
    return ctb.build_cost_table("darts_cnn", None, **SMALL)


def random_genotype(seed: int):
    g = torch.Generator().manual_seed(seed)
    return derive_genotype(torch.randn(14, 8, generator=g), torch.randn(14, 8, generator=g))


def profiler_macs(genotype, net, **sizes) -> int:
    model = build_network(genotype, net, **sizes)
    return model_complexity(model, tuple(model.default_cfg.input_size), activations=False).macs


def test_darts_v2_imagenet_table_sum_is_the_profilers_529_9m_exactly(imagenet_macs):
    assert imagenet_macs.genotype_cost(resolve_genotype("DARTS_V2"), "macs") == 529_911_552
    assert imagenet_macs.macs.shape == (14, 14, len(CNN_PRIMITIVES))
    assert {f.kind for f in imagenet_macs.fixed} == {"stem", "preprocess", "combine", "head"}


@pytest.mark.parametrize("name", ["DARTS_V1", "random-1", "random-2"])
def test_imagenet_table_sum_matches_profiler_for_other_genotypes(imagenet_macs, name):
    genotype = random_genotype(int(name[-1])) if name.startswith("random") else resolve_genotype(name)
    assert imagenet_macs.genotype_cost(genotype, "macs") == profiler_macs(genotype, "imagenet")


def test_small_cifar_table_sum_matches_profiler(small_macs):
    for seed in (3, 4):
        genotype = random_genotype(seed)
        assert small_macs.genotype_cost(genotype, "macs") == profiler_macs(genotype, "cifar", channels=8, layers=5)


def test_table_entries_follow_the_shapes(imagenet_macs):
    col = {p: k for k, p in enumerate(CNN_PRIMITIVES)}
    t = imagenet_macs
    # Pools, identity and 'none' have no MACs; FactorizedReduce (skip at stride 2) does.
    for op in ("none", "max_pool_3x3", "avg_pool_3x3"):
        assert not t.macs[:, :, col[op]].any()
    assert t.reductions == tuple(i in (4, 9) for i in range(14))
    assert not t.macs[0, :, col["skip_connect"]].any()
    assert t.macs[4, 0, col["skip_connect"]] > 0 and t.macs[4, 4, col["skip_connect"]] == 0  # edge 4: node 1 <- node 0
    # sep_conv_3x3 on 48 channels at 28x28, stride 1: 2 x (dw 9*C + pw C*C) per pixel.
    assert t.shapes[0][0] == (48, 48, 1, 28, 28)
    assert t.macs[0, 0, col["sep_conv_3x3"]] == 2 * (9 * 48 + 48 * 48) * 28 * 28


def test_json_round_trip_and_bad_files(tmp_path, small_macs):
    path = save_cost_table(small_macs, tmp_path / "t.json")
    back = load_cost_table(path)
    assert np.array_equal(back.macs, small_macs.macs) and back.fixed == small_macs.fixed
    assert back.latency_ms is None and not back.has("latency")
    with pytest.raises(ConfigError, match="MACs only"):
        back.entries("latency")
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ConfigError, match="not a nasdeploy cost table"):
        load_cost_table(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="does not exist"):
        load_cost_table(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="does not fit"):
        back.genotype_cost(resolve_genotype("PNAS"))


def test_cache_reuses_the_table_and_keys_on_backend(tmp_path, monkeypatch):
    first = ctb.build_or_load_cost_table("darts_cnn", None, cache_dir=tmp_path, **SMALL)
    files = list(tmp_path.iterdir())
    assert len(files) == 1

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(ctb, "build_cost_table", fail)
    again = ctb.build_or_load_cost_table("darts_cnn", None, cache_dir=tmp_path, **SMALL)
    assert np.array_equal(again.macs, first.macs)
    space = ctb.cell_space("darts_cnn")
    net = {"net": "cifar"}
    keys = {ctb.cost_table_cache_key(space, b, net, ctb.TABLE_LATENCY) for b in (None, "ort-cpu-1t", "torch-cpu-1t")}
    assert len(keys) == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_unavailable_backend_is_one_line_error():
    with pytest.raises(NasDeployError, match="torch-cuda skipped here: no CUDA device"):
        ctb.build_cost_table("darts_cnn", "torch-cuda", **SMALL)
    with pytest.raises(ConfigError, match="unknown latency backend"):
        ctb.build_cost_table("darts_cnn", "tpu", **SMALL)


def test_cli_writes_a_mac_table(tmp_path, monkeypatch):
    monkeypatch.setenv("NASDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "table.json"
    result = CliRunner().invoke(cli, ["profile", "--cost-table", "darts_cnn", "--net", "cifar", "--channels", "8",
                                      "--layers", "5", "--json", str(out), "DARTS_V2"])
    assert result.exit_code == 0, result.output
    genotype = resolve_genotype("DARTS_V2")
    assert f"{profiler_macs(genotype, 'cifar', channels=8, layers=5):,} MACs" in result.output
    assert load_cost_table(out).measurement["backend"] is None
    bad = CliRunner().invoke(cli, ["profile", "--cost-table", "nope"])
    assert bad.exit_code != 0


@pytest.mark.slow
def test_ort_1t_latency_table_sum_tracks_end_to_end_darts_v2(tmp_path, one_thread):
    """Tolerance 30% (measured about +10% on an idle 2-core Xeon). The table and the end-to-end run are timed
    minutes apart, so the comparison means something only on a quiet machine: when other processes competed
    (the profiler's own load rule, nasdeploy.profile.load), the test skips and says so instead of failing by
    chance (under load 3-5 it measured 8.4 vs 15.2 ms)."""
    from nasdeploy.profile.load import LoadMonitor

    monitor = LoadMonitor()
    monitor.start()
    table = ctb.build_cost_table("darts_cnn", "ort-cpu-1t", net="imagenet", latency_config=LatencyConfig(warmup=3, runs=15))
    genotype = resolve_genotype("DARTS_V2")
    summed = table.genotype_cost(genotype, "latency")
    model = build_network(genotype, "imagenet")
    measured = profile_model(model, latency="ort-cpu-1t", latency_config=LatencyConfig(warmup=5, runs=30),
                             activations=False).latency["ort-cpu-1t"].median_ms
    load = monitor.stop()
    assert table.measurement["settings"]["intra_op_threads"] == 1 and summed > 0 and measured > 0
    if load.contended:
        pytest.skip(f"the latency comparison needs a quiet machine: {load.line()}")
    assert abs(summed / measured - 1) < 0.30, (summed, measured, load.line())


def test_cost_table_modules_load_no_search_code():
    code = ("import sys, nasdeploy.profile.cost_table, nasdeploy.profile.cost_table_build;"
            "bad = sorted(m for m in sys.modules if m == 'nasdeploy.search' or m.startswith('nasdeploy.search.'));"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
