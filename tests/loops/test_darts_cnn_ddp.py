"""DDP search with 2 gloo processes on CPU: bit-identical alphas on every rank, only rank 0 writes."""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp

from nasdeploy.config.darts_cnn import DartsCnnSearchConfig
from nasdeploy.search.darts_cnn_loop import run_search
from nasdeploy.utils.yamlconfig import load_config

OVERRIDES = ["data.dataset=demo", "data.demo_train_size=64", "model.channels=4", "model.layers=3", "model.steps=2",
             "model.multiplier=2", "search.epochs=2", "search.batch_size=16", "search.eval_images=16",
             "search.threads=1", "search.device=cpu", "search.arch_lr=0.01"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    # Each rank gets its own run directory so the test can see that only rank 0 writes.
    result = run_search(load_config(DartsCnnSearchConfig, None, OVERRIDES), os.path.join(root, f"run{rank}"), progress=False)
    torch.save({"normal": result.alphas_normal, "reduce": result.alphas_reduce, "genotype": str(result.genotype)},
               os.path.join(root, f"alphas{rank}.pt"))


def test_two_process_gloo_search_keeps_alphas_identical(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    a0 = torch.load(tmp_path / "alphas0.pt")
    a1 = torch.load(tmp_path / "alphas1.pt")
    # 2 epochs x 2 steps, each rank on its own shard of both halves: only the all-reduced architecture
    # gradient (and DDP's weight gradients) keep the ranks in lockstep -- bitwise.
    assert torch.equal(a0["normal"], a1["normal"]) and torch.equal(a0["reduce"], a1["reduce"])
    assert a0["genotype"] == a1["genotype"]
    # Adam at lr 0.01 for 4 steps moves alphas far beyond their 1e-3 * N(0, 1) initialisation.
    assert a0["normal"].abs().max() > 0.02 and a0["reduce"].abs().max() > 0.02
    assert (tmp_path / "run0" / "genotype.json").is_file() and (tmp_path / "run0" / "checkpoint.pt").is_file()
    assert not (tmp_path / "run1").exists() or not any((tmp_path / "run1").iterdir())
