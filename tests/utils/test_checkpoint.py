"""Checkpoint format: atomic save, weights_only load, clear errors."""

from __future__ import annotations

import pytest
import torch

from nasdeploy.errors import CheckpointError
from nasdeploy.nets import build_network
from nasdeploy.utils.checkpoint import load_checkpoint, load_weights_into, save_checkpoint


def test_round_trip_and_plain_state_dict(tmp_path):
    model = build_network("DARTS_V2", "cifar", channels=8, layers=3)
    path = save_checkpoint(tmp_path / "c.pt", model.state_dict(), kind="train", meta={"net": "cifar"}, epoch=3)
    data = load_checkpoint(path)
    assert data["kind"] == "train" and data["epoch"] == 3 and data["meta"]["net"] == "cifar"
    other = build_network("DARTS_V2", "cifar", channels=8, layers=3)
    load_weights_into(other, data)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    assert load_checkpoint(tmp_path / "plain.pt")["kind"] == "weights"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_errors(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    small = build_network("DARTS_V2", "cifar", channels=8, layers=3)
    big = build_network("DARTS_V2", "cifar", channels=10, layers=3)
    save_checkpoint(tmp_path / "s.pt", small.state_dict(), kind="train")
    with pytest.raises(CheckpointError, match="does not fit the model: .*wrong shape"):
        load_weights_into(big, load_checkpoint(tmp_path / "s.pt"))
