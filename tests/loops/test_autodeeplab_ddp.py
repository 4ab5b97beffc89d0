"""DDP Auto-DeepLab search and segmentation training with 2 gloo processes on CPU (one mp.spawn for both runs)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from nasdeploy.config.autodeeplab import AutoDeepLabSearchConfig, AutoDeepLabTrainConfig
from nasdeploy.data.segmentation import build_segmentation_dataset
from nasdeploy.errors import ConfigError
from nasdeploy.search.autodeeplab_loop import run_search
from nasdeploy.spaces.autodeeplab import AutoDeepLabSupernet
from nasdeploy.tasks.segmentation import evaluate_miou
from nasdeploy.train.autodeeplab_loop import load_segmentation_model, run_training
from nasdeploy.utils.checkpoint import load_checkpoint
from nasdeploy.utils.distributed import DistContext, local_batch_size, rank_worker_init
from nasdeploy.utils.yamlconfig import from_dict

# 8 training images: halves of 4, so each rank gets a different 2 of each half per step (global batch 4).
# 3 validation images: rank 0 evaluates 2 and rank 1 one, so the summed confusion matrix must neither pad nor repeat.
SEARCH = {
    "supernet": {"layers": 2, "filter_multiplier": 2, "blocks": 2, "stem_channels": 4, "mixed_op": "reference",
                 "num_classes": 4},
    "data": {"dataset": "synthetic", "image_size": [32, 32], "num_train": 8, "num_val": 3, "crop_size": [32, 32]},
    "search": {"epochs": 2, "arch_start_epoch": 0, "batch_size": 4, "arch_lr": 0.01, "threads": 1},
}
TRAIN = {
    "net": {"genotype": "AutoDeepLab", "filter_multiplier": 2, "aspp_channels": 8, "decoder_channels": 8,
            "low_level_channels": 4},
    "data": {"dataset": "synthetic", "image_size": [32, 32], "num_train": 8, "num_val": 3, "crop_size": [32, 32]},
    "train": {"epochs": 2, "batch_size": 4, "threads": 1},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _recording(factory, made: list):
    """`factory` that also appends what it builds to `made` (to read a rank's final model)."""
    def build(*args, **kwargs):
        made.append(factory(*args, **kwargs))
        return made[-1]
    return build


def _worker(rank: int, world: int, port: int, root: str) -> None:
    import nasdeploy.search.autodeeplab_loop as search_loop
    import nasdeploy.train.autodeeplab_loop as train_loop

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    supernets: list = []
    nets: list = []
    search_loop.AutoDeepLabSupernet = _recording(search_loop.AutoDeepLabSupernet, supernets)
    train_loop.build_network = _recording(train_loop.build_network, nets)
    # One group for all runs (the loops join it and leave it up); a rank mismatch fails in 2 minutes, not 30.
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    # Each rank gets its own run directories so the test can see that only rank 0 writes.
    train_dirs = [os.path.join(root, name) for name in ("train0", "train1", "train_epoch1")]
    try:
        search = run_search(from_dict(AutoDeepLabSearchConfig, SEARCH), os.path.join(root, f"search{rank}"), progress=False)
        # Training stops after epoch 1; rank 1 then resumes from a copy of rank 0's directory (as from a shared
        # one), each rank restoring its own RNG state. The copy also feeds the single-process resume test.
        run_training(from_dict(AutoDeepLabTrainConfig, TRAIN), None, train_dirs[rank], progress=False, stop_after_epoch=1)
        if rank == 0:
            for target in train_dirs[1:]:
                shutil.copytree(train_dirs[0], target)
        dist.barrier()
        train = run_training(from_dict(AutoDeepLabTrainConfig, TRAIN), None, train_dirs[rank], progress=False)
    finally:
        dist.destroy_process_group()
    torch.save({"search": dataclasses.asdict(search), "train": dataclasses.asdict(train),
                "arch": [p.detach().clone() for p in supernets[-1].arch_parameters()],
                "weights": {k: v.detach().clone() for k, v in nets[-1].state_dict().items()}},
               os.path.join(root, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("autodeeplab_ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(root)), nprocs=2, join=True)
    return root, [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _same_result(a: dict, b: dict) -> bool:
    paths = {"out_dir", "genotype_path", "model_path"}
    return {k: v for k, v in a.items() if k not in paths} == {k: v for k, v in b.items() if k not in paths}


def test_search_alpha_beta_bitwise_identical_and_moved(ranks):
    root, (r0, r1) = ranks
    # Each rank trains on its own shards of halves A and B: only the all-reduced architecture gradient keeps
    # alpha and beta in lockstep -- bitwise.
    for a, b in zip(r0["arch"], r1["arch"]):
        assert torch.equal(a, b)
    saved = load_checkpoint(root / "search0" / "checkpoint.pt")["model"]
    assert torch.equal(saved["alphas"], r0["arch"][0]) and torch.equal(saved["betas"], r0["arch"][1])
    torch.manual_seed(0)
    init = AutoDeepLabSupernet(from_dict(AutoDeepLabSearchConfig, SEARCH).supernet)
    # 2 Adam steps at lr 0.01 move alpha/beta far beyond their 1e-3 * N(0, 1) initialisation.
    assert (r0["arch"][0] - init.alphas.detach()).abs().max() > 5e-3
    assert (r0["arch"][1] - init.betas.detach()).abs().max() > 5e-3
    assert _same_result(r0["search"], r1["search"])
    records = [json.loads(line) for line in (root / "search0" / "log.jsonl").read_text().splitlines()]
    assert [r["arch_updates"] for r in records] == [True, True]


def test_only_rank0_writes(ranks):
    root, _ = ranks
    assert sorted(p.name for p in (root / "search0").iterdir()) == [
        ".lock", ".nasdeploy", "checkpoint.pt", "config.yaml", "done.json", "genotype.json", "log.jsonl"]
    assert sorted(p.name for p in (root / "train0").iterdir()) == [
        ".lock", ".nasdeploy", "checkpoint.pt", "config.yaml", "done.json", "log.jsonl", "model.pt"]
    assert not (root / "search1").exists()
    # Rank 1 resumed training from a copy of rank 0's epoch-1 directory and left it as it was.
    copy, snapshot = root / "train1", root / "train_epoch1"
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in snapshot.iterdir())
    assert all((copy / p.name).read_bytes() == p.read_bytes() for p in snapshot.iterdir())
    assert len((root / "train0" / "log.jsonl").read_text().splitlines()) == 2


def test_training_weights_identical_on_both_ranks(ranks):
    root, (r0, r1) = ranks
    w0, w1 = r0["weights"], r1["weights"]
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # parameters and (broadcast) BN statistics
    saved = load_checkpoint(root / "train0" / "model.pt")["model"]
    assert all(torch.equal(saved[k], w0[k]) for k in saved)
    assert _same_result(r0["train"], r1["train"])


def test_sharded_val_miou_equals_single_process(ranks):
    root, (r0, _) = ranks
    torch.set_num_threads(1)
    # Segmentation net: the saved model on the whole validation set, in this one process.
    train_cfg = from_dict(AutoDeepLabTrainConfig, TRAIN)
    val = DataLoader(build_segmentation_dataset(train_cfg.data, "val", train=False), batch_size=1)
    single = evaluate_miou(load_segmentation_model(root / "train0" / "model.pt"), val, 4, torch.device("cpu"))
    assert r0["train"]["val_miou"] == single["miou"]
    summary = json.loads((root / "train0" / "done.json").read_text())
    assert summary["val_pixel_acc"] == single["pixel_acc"]
    # Supernet: the last checkpoint (written right after the last evaluation).
    search_cfg = from_dict(AutoDeepLabSearchConfig, SEARCH)
    supernet = AutoDeepLabSupernet(search_cfg.supernet)
    supernet.load_state_dict(load_checkpoint(root / "search0" / "checkpoint.pt")["model"])
    val = DataLoader(build_segmentation_dataset(search_cfg.data, "val", train=False), batch_size=1)
    assert r0["search"]["val_miou"] == evaluate_miou(supernet, val, 4, torch.device("cpu"))["miou"]


def test_single_process_resumes_a_two_process_checkpoint_deterministically(ranks, tmp_path):
    root, _ = ranks
    torch.set_num_threads(1)
    cfg = from_dict(AutoDeepLabTrainConfig, TRAIN)
    weights = []
    for name in ("a", "b"):  # 2 saved RNG states, 1 process: re-seeded by (epoch, rank), the same every time
        shutil.copytree(root / "train_epoch1", tmp_path / name)
        weights.append(load_checkpoint(run_training(cfg, None, tmp_path / name, progress=False).model_path)["model"])
        assert json.loads((tmp_path / name / "done.json").read_text())["finished"]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_global_batch_must_split_over_ranks():
    ctx = DistContext(0, 2, 0, torch.device("cpu"))
    assert local_batch_size(8, ctx, "search") == 4
    with pytest.raises(ConfigError, match=r"search.batch_size \(5\) must be divisible by the 2 DDP processes"):
        local_batch_size(5, ctx, "search")
    with pytest.raises(ConfigError, match="BatchNorm needs >= 2"):
        local_batch_size(2, ctx, "train")


def test_dataloader_workers_of_other_ranks_get_their_own_seeds():
    assert rank_worker_init(DistContext(0, 2, 0, torch.device("cpu"))) is None  # rank 0: unchanged
    init = rank_worker_init(DistContext(1, 2, 1, torch.device("cpu")))
    previous = torch.initial_seed()
    try:
        torch.manual_seed(1234)  # what DataLoader gives worker 0 on every rank (shared generator)
        init(0)
        assert torch.initial_seed() == 1234 + 7919
    finally:
        torch.manual_seed(previous)
