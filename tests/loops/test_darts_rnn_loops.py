"""The recurrent search and training loops on tiny settings: outputs, resume, ASGD switch, architect use."""

from __future__ import annotations

import json

import pytest
import torch

from nasdeploy.config.darts_rnn import DartsRnnSearchConfig, DartsRnnTrainConfig
from nasdeploy.errors import ConfigError
from nasdeploy.genotypes import load_genotype
from nasdeploy.nets.darts_rnn import load_darts_rnn_network
from nasdeploy.search.architect import Architect, ArchitectConfig
from nasdeploy.search.darts_rnn_loop import load_search_checkpoint_model, run_search
from nasdeploy.spaces.darts_rnn import DartsRnnSupernet
from nasdeploy.tasks.language_model import LanguageModelBatch, architect_loss
from nasdeploy.train import darts_rnn_loop
from nasdeploy.train.darts_rnn_loop import averaged_weights, run_training, should_switch_to_asgd
from nasdeploy.utils.checkpoint import load_checkpoint
from nasdeploy.utils.yamlconfig import load_config

TINY_DATA = ["data.demo_train_sentences=50", "data.demo_valid_sentences=12", "data.demo_test_sentences=6"]
TINY_SEARCH = TINY_DATA + [
    "model.emsize=8", "model.nhid=8", "model.steps=3", "search.epochs=2", "search.batch_size=4", "search.bptt=6",
    "search.max_seq_len_delta=2", "search.max_batches_per_epoch=2", "search.lr=2.0",
    "search.threads=1",
]
TINY_TRAIN = TINY_DATA + [
    "model.emsize=8", "model.nhid=8", "train.epochs=3", "train.batch_size=4", "train.eval_batch_size=4",
    "train.test_batch_size=2", "train.bptt=6", "train.max_seq_len_delta=2", "train.max_batches_per_epoch=3",
    "train.nonmono=1", "train.threads=1",
]


def test_search_writes_its_run_directory_and_resumes_bitwise(tmp_path, capsys):
    config = load_config(DartsRnnSearchConfig, None, TINY_SEARCH)
    straight = run_search(config, tmp_path / "a", progress=False)
    assert straight.finished and straight.epochs_done == 2
    for name in ("genotype.json", "alphas.jsonl", "log.jsonl", "checkpoint.pt", "config.yaml", "vocab.json", "done.json"):
        assert (tmp_path / "a" / name).is_file(), name
    assert load_genotype(tmp_path / "a" / "genotype.json", "rnn_cell").steps == 3
    alphas_log = [json.loads(line) for line in (tmp_path / "a" / "alphas.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in alphas_log] == [1, 2] and len(alphas_log[-1]["alphas"]) == 6

    stopped = run_search(config, tmp_path / "b", stop_after_epoch=1, progress=False)
    assert not stopped.finished and not (tmp_path / "b" / "done.json").exists()
    resumed = run_search(config, tmp_path / "b", progress=False)
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["model"]
    assert not torch.equal(a["alphas"], torch.zeros_like(a["alphas"]))
    assert all(torch.equal(a[k], b[k]) for k in a)  # weights and alphas bitwise identical
    assert resumed.genotype == straight.genotype and resumed.valid_ppl == straight.valid_ppl
    assert len((tmp_path / "b" / "log.jsonl").read_text().splitlines()) == 2

    capsys.readouterr()
    again = run_search(config, tmp_path / "a")  # finished: not redone
    assert again.genotype == straight.genotype and "is finished; nothing to do" in capsys.readouterr().out
    other = load_config(DartsRnnSearchConfig, None, TINY_SEARCH + ["search.lr=3.0"])
    (tmp_path / "a" / "done.json").unlink()
    with pytest.raises(ConfigError, match=r"different config .*search.lr: 2.0 there vs 3.0 now"):
        run_search(other, tmp_path / "a", progress=False)


def test_architect_steps_the_alphas_with_fixed_dropout_masks():
    torch.manual_seed(0)
    model = DartsRnnSupernet(20, emsize=6, nhid=6, steps=2)
    weights = torch.optim.SGD(model.weight_parameters(), lr=1.0)
    architect = Architect(model, architect_loss, weights, ArchitectConfig(lr=3e-3, betas=(0.9, 0.999), weight_decay=1e-3))
    x, y = torch.randint(0, 20, (5, 3)), torch.randint(0, 20, (5, 3))
    batch = LanguageModelBatch(x, y, model.init_hidden(3), seed=7)
    first = architect_loss(model, batch)
    assert architect_loss(model, batch).item() == first.item()  # same seed, same dropout masks
    assert batch.next_hidden is not None and batch.next_hidden.shape == (1, 3, 6)
    before = model.alphas.detach().clone()
    architect.step(batch, LanguageModelBatch(x, y, model.init_hidden(3), seed=8), eta=1.0)
    assert not torch.equal(model.alphas, before)
    # second order runs through the same loss (virtual step, finite-difference Hessian term)
    second = Architect(model, architect_loss, weights, ArchitectConfig(order="second", lr=3e-3, betas=(0.9, 0.999)))
    grads = second.second_order_grad(batch, LanguageModelBatch(x, y, model.init_hidden(3), seed=8), eta=1.0)
    assert grads[0].shape == (3, 5) and torch.isfinite(grads[0]).all()


def test_asgd_trigger_is_the_non_monotone_rule():
    assert not should_switch_to_asgd([5.0, 4.0], 4.5, nonmono=2)  # not enough history
    assert not should_switch_to_asgd([5.0, 4.0, 3.9], 3.95, nonmono=2)  # still better than 5.0
    assert should_switch_to_asgd([5.0, 4.0, 3.9], 5.1, nonmono=2)


def test_averaged_weights_swaps_in_and_restores():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    model = torch.nn.Module()
    model.p = p
    opt = torch.optim.ASGD([p], lr=0.5, t0=0, lambd=0.0)
    for _ in range(3):
        p.grad = torch.ones(2)
        opt.step()
    after = p.detach().clone()
    average = opt.state[p]["ax"].clone()
    assert not torch.equal(after, average)
    with averaged_weights(model, opt):
        assert torch.equal(p.detach(), average)
    assert torch.equal(p.detach(), after)
    with averaged_weights(model, torch.optim.SGD([p], lr=0.1)):  # plain SGD: nothing to swap
        assert torch.equal(p.detach(), after)


def test_training_switches_to_asgd_saves_best_and_resumes_bitwise(tmp_path, monkeypatch):
    monkeypatch.setattr(darts_rnn_loop, "should_switch_to_asgd", lambda history, loss, nonmono: len(history) == 1)
    config = load_config(DartsRnnTrainConfig, None, TINY_TRAIN)
    straight = run_training(config, "DARTS_V2_RNN", tmp_path / "a", progress=False)
    assert straight.finished and straight.asgd_epoch == 2 and straight.test_ppl > 1.0
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["optimizer"] for r in log] == ["sgd", "asgd", "asgd"]
    final = json.loads((tmp_path / "a" / "done.json").read_text())
    assert final["params"] == straight.params and final["genotype"]["kind"] == "rnn_cell"
    model = load_darts_rnn_network(tmp_path / "a" / "best.pt")
    assert model.ntokens == final["corpus"]["vocab"] and not model.training

    run_training(config, "DARTS_V2_RNN", tmp_path / "b", stop_after_epoch=2, progress=False)  # stops in ASGD
    resumed = run_training(config, "DARTS_V2_RNN", tmp_path / "b", progress=False)
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert resumed.best_valid_ppl == straight.best_valid_ppl and resumed.test_ppl == straight.test_ppl
    with pytest.raises(ConfigError, match="genotype"):
        (tmp_path / "b" / "done.json").unlink()
        run_training(config, "DARTS_V1_RNN", tmp_path / "b", progress=False)


def test_second_order_search_runs_and_its_checkpoint_rebuilds_the_supernet(tmp_path):
    config = load_config(DartsRnnSearchConfig, None, TINY_SEARCH + ["search.order=second", "search.epochs=1",
                                                         "search.max_batches_per_epoch=1"])
    result = run_search(config, tmp_path, progress=False)
    assert result.finished and result.genotype.steps == 3
    model, ckpt = load_search_checkpoint_model(tmp_path / "checkpoint.pt")
    assert torch.equal(model.alphas, ckpt["model"]["alphas"])
    assert ckpt["meta"]["genotype"]["recurrent"] == [list(e) for e in result.genotype.recurrent]
