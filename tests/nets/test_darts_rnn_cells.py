"""The recurrent cells against hand computation and an independent per-op reference; the LM's sizes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from nasdeploy.errors import ConfigError, GenotypeError
from nasdeploy.genotypes import RecurrentGenotype
from nasdeploy.nets.darts_rnn import DARTSCell, build_darts_rnn_network
from nasdeploy.profile.darts_rnn import analytic_macs_per_token, count_macs_per_token
from nasdeploy.ops.darts_rnn import LockedDropout, embedded_dropout
from nasdeploy.spaces.darts_rnn import DARTSCellSearch, DartsRnnSupernet


def sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_one_node_derived_cell_matches_hand_computation():
    # ninp = nhid = 1: W0 is 2 x 2 (rows: x, h; columns: c, h), W1 is 1 x 2.
    cell = DARTSCell(1, 1, RecurrentGenotype((("relu", 0),), (1,))).double().eval()
    with torch.no_grad():
        cell._W0.copy_(torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=torch.float64))
        cell._Ws[0].copy_(torch.tensor([[1.5, -0.75]], dtype=torch.float64))
    xs, h = [0.8, -0.3], 0.2
    expected = []
    for x in xs:  # the documented recurrence, written out by hand
        c0 = sig(0.5 * x + 2.0 * h)
        h0 = math.tanh(-1.0 * x + 0.25 * h)
        s0 = h + c0 * (h0 - h)
        c1 = sig(1.5 * s0)
        h1 = max(0.0, -0.75 * s0)
        s1 = s0 + c1 * (h1 - s0)
        h = s1  # output = mean of nodes [1] = s1, carried to the next step
        expected.append(s1)
    out, last = cell(torch.tensor(xs, dtype=torch.float64).view(2, 1, 1), torch.tensor([[0.2]], dtype=torch.float64))
    assert out.view(-1).tolist() == pytest.approx(expected, abs=1e-12)
    assert last.item() == pytest.approx(expected[-1], abs=1e-12)


def test_one_node_search_cell_matches_hand_computation():
    # Batch of two so BatchNorm (affine=False, batch statistics) is defined; nhid = 1.
    cell = DARTSCellSearch(1, 1, steps=1).double().train()
    with torch.no_grad():
        cell._W0.copy_(torch.tensor([[0.3, 0.7], [-0.4, 1.1]], dtype=torch.float64))
        cell._Ws[0].copy_(torch.tensor([[0.9, -1.3]], dtype=torch.float64))
    logits = torch.tensor([[0.1, -0.2, 0.4, 0.0, 0.3]], dtype=torch.float64)  # none, tanh, relu, sigmoid, identity
    w = torch.softmax(logits, -1)[0].tolist()
    x, h = [0.5, -1.0], [0.25, 0.6]

    def bn(values):  # BatchNorm1d over the batch: biased variance, eps 1e-5
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / len(values)
        return [(v - mean) / math.sqrt(var + 1e-5) for v in values]

    s0 = bn([hb + sig(0.3 * xb - 0.4 * hb) * (math.tanh(0.7 * xb + 1.1 * hb) - hb) for xb, hb in zip(x, h)])
    acts = [math.tanh, lambda v: max(0.0, v), sig, lambda v: v]
    node = []
    for s in s0:
        c, hh = sig(0.9 * s), -1.3 * s
        node.append(sum(wk * (s + c * (act(hh) - s)) for wk, act in zip(w[1:], acts)))  # 'none' adds zero
    expected = bn(node)
    out, _ = cell(torch.tensor(x, dtype=torch.float64).view(1, 2, 1), torch.tensor(h, dtype=torch.float64).view(2, 1),
                  weights=torch.softmax(logits, -1))
    assert out.view(-1).tolist() == pytest.approx(expected, abs=1e-10)


def test_search_cell_mixing_equals_per_op_reference():
    torch.manual_seed(0)
    steps, nhid, batch = 3, 4, 5
    cell = DARTSCellSearch(nhid, nhid, steps=steps).double().train()
    weights = torch.softmax(torch.randn(6, 5, dtype=torch.float64), -1)
    s0 = torch.randn(batch, nhid, dtype=torch.float64)
    got = cell.nodes(s0, None, weights=weights)
    # Independent reference: every edge and op separately, as the paper writes it.
    acts = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "identity": lambda t: t}
    bn = torch.nn.functional.batch_norm
    states = [bn(s0, None, None, training=True)]
    offset = 0
    for i in range(steps):
        node = torch.zeros_like(s0)
        for j, s in enumerate(states):
            c, h = (s @ cell._Ws[i]).chunk(2, -1)
            for k, name in enumerate(cell.primitives):
                if name != "none":
                    node = node + weights[offset + j, k] * (s + torch.sigmoid(c) * (acts[name](h) - s))
        states.append(bn(node, None, None, training=True))
        offset += i + 1
    expected = torch.stack(states[1:]).mean(0)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_search_model_alphas_are_parameters_of_the_published_shape():
    model = DartsRnnSupernet(50, emsize=8, nhid=8)
    assert tuple(model.alphas.shape) == (36, 5)
    assert "alphas" in model.state_dict()
    assert [id(p) for p in model.arch_parameters()] == [id(model.alphas)]
    assert id(model.alphas) not in {id(p) for p in model.weight_parameters()}
    assert model.alphas.abs().max() < 1e-2  # 1e-3 * N(0, 1)
    with pytest.raises(ConfigError, match="batch size >= 2"):
        model.init_hidden(1)


def test_darts_v2_published_size_parameter_count():
    model = build_darts_rnn_network("DARTS_V2_RNN", 10000)  # emsize = nhid = 850
    n = sum(p.numel() for p in model.parameters())
    embedding, decoder_bias = 10000 * 850, 10000  # decoder weight is tied to the embedding
    w0, ws = (850 + 850) * 2 * 850, 8 * 850 * 2 * 850
    assert n == embedding + decoder_bias + w0 + ws == 22_960_000
    assert round(n / 1e6) == 23  # published: 23M
    assert model.decoder.weight is model.encoder.weight
    cfg = model.default_cfg
    assert (cfg.dropout, cfg.dropouth, cfg.dropoutx, cfg.dropouti, cfg.dropoute) == (0.75, 0.25, 0.75, 0.2, 0.1)


def test_macs_per_token_flop_counter_matches_closed_form():
    model = build_darts_rnn_network("DARTS_V1_RNN", 37, emsize=12, nhid=12)
    assert count_macs_per_token(model, seq_len=5, batch_size=3) == analytic_macs_per_token(12, 12, 8, 37)
    assert analytic_macs_per_token(850, 850, 8, 10000) == 22_950_000


def test_language_model_shapes_eval_determinism_and_hidden_carry():
    model = build_darts_rnn_network("DARTS_V2_RNN", 30, emsize=6, nhid=6).eval()
    tokens = torch.randint(0, 30, (7, 3))
    h = model.init_hidden(3)
    lp, h1 = model(tokens, h)
    assert lp.shape == (7, 3, 30) and h1.shape == (1, 3, 6)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(7, 3))
    lp_a, h_a = model(tokens[:4], h)  # two windows with the state carried == one long window
    lp_b, h_b = model(tokens[4:], h_a)
    torch.testing.assert_close(torch.cat([lp_a, lp_b]), lp)
    torch.testing.assert_close(h_b, h1)


def test_locked_and_embedding_dropout_masks():
    torch.manual_seed(0)
    drop = LockedDropout().train()
    out = drop(torch.ones(6, 4, 50), 0.5)
    assert torch.equal(out, out[:1].expand_as(out))  # one mask for all time steps
    assert set(out.unique().tolist()) <= {0.0, 2.0} and (out == 0).any()
    embed = torch.nn.Embedding(10, 5)
    words = torch.tensor([[3, 3, 4, 4, 5, 5, 6, 6]]).repeat(20, 1)
    dropped = embedded_dropout(embed, words, 0.5)
    for a in range(0, 8, 2):  # the same word gets the same (whole-vector) mask
        assert torch.equal(dropped[:, a], dropped[:, a + 1])
    zero_rows = (dropped == 0).all(-1)
    assert zero_rows.any() and ((dropped != 0).all(-1) | zero_rows).all()


def test_cell_rejects_unknown_ops_and_wrong_genotype_kinds():
    with pytest.raises(GenotypeError, match="wrong genotype kind"):
        build_darts_rnn_network("DARTS_V2", 100)
    with pytest.raises(ConfigError, match="emsize == nhid"):
        build_darts_rnn_network("DARTS_V2_RNN", 100, emsize=10, nhid=12)
    with pytest.raises(ConfigError, match="dropout"):
        build_darts_rnn_network("DARTS_V2_RNN", 100, dropout=1.5)


REFERENCE_RNN_KEYS = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "darts_reference_rnn_keys.json").read_text("utf-8"))


@pytest.mark.parametrize("name", sorted(REFERENCE_RNN_KEYS["models"]))
def test_recurrent_lm_keys_and_shapes_equal_the_reference(name):
    # Includes ENAS_RNN (11 nodes, concat of 6 nodes): a reference checkpoint maps one to one.
    s = REFERENCE_RNN_KEYS["settings"]
    model = build_darts_rnn_network(name, s["ntokens"], emsize=s["emsize"], nhid=s["nhid"])
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == REFERENCE_RNN_KEYS["models"][name]


@pytest.mark.parametrize("build", [
    lambda: build_darts_rnn_network("DARTS_V2_RNN", 2000, emsize=16, nhid=16),
    lambda: DartsRnnSupernet(2000, emsize=16, nhid=16, steps=2),
])
def test_embedding_and_tied_decoder_init_is_the_reference_uniform_004(build):
    # The reference initialises encoder (= tied decoder) weights U(-0.04, 0.04), like the cell matrices.
    torch.manual_seed(0)
    model = build()
    w = model.encoder.weight.detach()
    assert model.decoder.weight is model.encoder.weight
    assert w.abs().max() <= 0.04 and w.abs().max() > 0.039
    assert abs(w.std().item() - 0.04 / math.sqrt(3)) < 1e-3  # uniform, not a narrower law
    assert torch.count_nonzero(model.decoder.bias) == 0
