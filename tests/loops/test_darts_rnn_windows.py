"""TBPTT window lengths: the search rule of the reference (rnn/train_search.py) vs the training rule."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from nasdeploy.config.darts_rnn import DartsRnnSearchConfig, DartsRnnSearchOptions, DartsRnnSupernetConfig
from nasdeploy.search import darts_rnn_loop
from nasdeploy.tasks.language_model import TBPTTSettings, sample_search_seq_len, sample_seq_len, tbptt_epoch

BPTT = 35


class RecordingArchitect:
    """Stands in for the architect: records the windows it is given."""

    def __init__(self) -> None:
        self.train_lengths: list[int] = []
        self.val_lengths: list[int] = []
        self.etas: list[float] = []

    def step(self, train_batch, val_batch, eta: float) -> None:
        self.train_lengths.append(train_batch.x.size(0))
        self.val_lengths.append(val_batch.x.size(0))
        self.etas.append(eta)
        val_batch.next_hidden = val_batch.hidden


def test_search_windows_have_no_normal_jitter_and_the_architecture_window_is_full_bptt():
    np.random.seed(0)
    torch.manual_seed(0)
    bptt = 10  # short windows keep the epoch cheap; the rule is the same at 35
    config = DartsRnnSearchConfig(model=DartsRnnSupernetConfig(emsize=4, nhid=4, steps=1),
                                  search=DartsRnnSearchOptions(batch_size=2, bptt=bptt, lr=20.0))
    model = darts_rnn_loop.build_search_model(config, 7)
    optimizer = torch.optim.SGD(model.weight_parameters(), lr=20.0)
    train_data = torch.randint(0, 7, (1000, 2))
    search_data = torch.randint(0, 7, (150, 2))
    architect = RecordingArchitect()
    darts_rnn_loop.search_epoch(model, architect, optimizer, train_data, search_data, config.search)
    lengths = architect.train_lengths[:-1]  # the last window is cut by the end of the data
    assert len(lengths) > 80
    assert set(lengths) == {bptt, bptt // 2}  # bptt or int(bptt / 2); N(bptt, 5) jitter gives many lengths
    full = [v for v, i in zip(architect.val_lengths, np.cumsum([0] + architect.train_lengths[:-1]))
            if i % (search_data.size(0) - 1) + bptt <= search_data.size(0) - 1]
    assert set(full) == {bptt}  # the architecture window is bptt long even after a half window
    for length, eta in zip(lengths, architect.etas):
        assert eta == 20.0 * length / bptt


def test_search_rule_probabilities_and_training_rule_keeps_its_jitter():
    np.random.seed(1)
    search = [sample_search_seq_len(BPTT) for _ in range(4000)]
    assert set(search) == {BPTT, 17}
    assert abs(search.count(17) / len(search) - 0.05) < 0.015
    train = [sample_seq_len(BPTT, 20) for _ in range(2000)]
    assert len(set(train)) > 15 and min(train) >= 5 and max(train) <= BPTT + 20


def test_tbptt_epoch_uses_the_rule_its_settings_name():
    torch.manual_seed(0)
    config = DartsRnnSearchConfig(model=DartsRnnSupernetConfig(emsize=4, nhid=4, steps=1))
    model = darts_rnn_loop.build_search_model(replace(config), 7)
    optimizer = torch.optim.SGD(model.weight_parameters(), lr=1.0)
    data = torch.randint(0, 7, (600, 2))
    for jitter, expect_many in ((True, True), (False, False)):
        np.random.seed(2)
        seen: list[int] = []
        settings = TBPTTSettings(10, 5, 1.0, 0.25, 0.0, 0.0, max_batches=25, length_jitter=jitter)
        tbptt_epoch(model, optimizer, data, model.weight_parameters(), settings,
                    before_step=lambda x, y, h, i, n, lr: seen.append(n))
        assert (len(set(seen)) > 5) == expect_many
