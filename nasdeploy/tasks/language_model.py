"""Language-model steps shared by the DARTS recurrent search and training loops.

Truncated backprop through time as in the reference: a random window length around bptt in training
(bptt or bptt/2 without the normal jitter in search; the learning rate scaled by length / bptt), the hidden state carried from batch to batch and detached,
AR/TAR regularisation on the cell outputs, and exact mean-NLL evaluation over a whole split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch.nn import functional as F

from nasdeploy.data.text import batchify, get_batch
from nasdeploy.errors import DataError
from nasdeploy.utils.epoch_driver import EpochBar


def sample_seq_len(bptt: int, max_delta: int) -> int:
    """Window length: bptt (or bptt/2 with probability 0.05) plus N(0, 5) noise, in [5, bptt + max_delta]."""
    base = bptt if np.random.random() < 0.95 else bptt / 2.0
    return int(min(max(5, int(np.random.normal(base, 5))), bptt + max_delta))


def sample_search_seq_len(bptt: int) -> int:
    """Search window length: bptt, or int(bptt / 2) with probability 0.05, no N(0, 5) noise.

    The reference search (rnn/train_search.py) has the normal jitter commented out; its architecture
    window always has the full bptt, whatever the training window's length.
    """
    return int(bptt if np.random.random() < 0.95 else bptt / 2.0)


def nll(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of targets [T, B] under log_probs [T, B, V]."""
    return F.nll_loss(log_probs.reshape(-1, log_probs.size(-1)), targets.reshape(-1))


def regularised_loss(model: Any, x: torch.Tensor, y: torch.Tensor, hidden: torch.Tensor,
                     alpha: float, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss with AR/TAR, raw NLL, new hidden): AR = alpha * mean(dropped^2), TAR = beta * mean((h_t - h_{t-1})^2)."""
    log_probs, new_hidden, raw, dropped = model(x, hidden, return_h=True)
    raw_loss = nll(log_probs, y)
    loss = raw_loss
    if alpha:
        loss = loss + alpha * dropped.pow(2).mean()
    if beta and raw.size(0) > 1:
        loss = loss + beta * (raw[1:] - raw[:-1]).pow(2).mean()
    return loss, raw_loss, new_hidden


@dataclass
class LanguageModelBatch:
    """A TBPTT window for the architect: inputs, targets, the carried hidden state and a dropout seed.

    Every evaluation of the same batch draws the same dropout masks (the seed), so the architect's
    finite differences compare like with like; the hidden state the last evaluation produced is left
    in `next_hidden` so the caller can carry it on.
    """

    x: torch.Tensor
    y: torch.Tensor
    hidden: torch.Tensor
    seed: int
    next_hidden: torch.Tensor | None = field(default=None, repr=False)


def architect_loss(forward: Callable[..., Any], batch: LanguageModelBatch) -> torch.Tensor:
    """The architecture objective: plain NLL of the batch (as the reference), with fixed dropout masks."""
    devices = [batch.x.device] if batch.x.is_cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(batch.seed)
        log_probs, hidden = forward(batch.x, batch.hidden)
    batch.next_hidden = hidden.detach()
    return nll(log_probs, batch.y)


@torch.no_grad()
def evaluate_language_model(model: Any, tokens: torch.Tensor, batch_size: int, bptt: int) -> float:
    """Mean NLL per predicted token over a whole split (model put in eval mode, hidden carried)."""
    was_training = model.training
    model.eval()
    source = batchify(tokens, batch_size).to(next(model.parameters()).device)
    hidden = model.init_hidden(batch_size)
    total, count = 0.0, 0
    for i in range(0, source.size(0) - 1, bptt):
        x, y = get_batch(source, i, bptt)
        log_probs, hidden = model(x, hidden)
        total += nll(log_probs, y).item() * y.numel()
        count += y.numel()
    model.train(was_training)
    return total / count


def perplexity(mean_nll: float) -> float:
    """exp(NLL), capped to stay finite in logs."""
    return math.exp(min(mean_nll, 700.0))


@dataclass(frozen=True)
class TBPTTSettings:
    """What one truncated-BPTT epoch needs from a config."""

    bptt: int
    max_seq_len_delta: int
    lr: float
    clip: float
    alpha_ar: float
    beta_tar: float
    max_batches: int | None = None
    length_jitter: bool = True  # window lengths: True the training rule (sample_seq_len), False the search rule


# before_step(x, y, hidden, window_start, seq_len, lr): e.g. the architect's step on a validation window.
BeforeStep = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, int, float], None]


def tbptt_epoch(model: Any, optimizer: torch.optim.Optimizer, data: torch.Tensor, params: list[torch.Tensor],
                settings: TBPTTSettings, bar: EpochBar | None = None, before_step: BeforeStep | None = None) -> float:
    """One epoch of truncated BPTT over batchified data [N, B]; returns the mean raw training NLL.

    The hidden state starts at zero and is carried (detached) from window to window; each window's
    learning rate is lr * seq_len / bptt; gradients of `params` are clipped to norm `clip`. `bar` counts
    the rows done and checks each window's loss.
    """
    s = settings
    model.train()
    hidden = model.init_hidden(data.size(1))
    total, count, i, step = 0.0, 0, 0, 0
    if bar is not None:
        bar.expect(data.size(0) - 1)
    while i < data.size(0) - 2 and (s.max_batches is None or step < s.max_batches):
        seq_len = sample_seq_len(s.bptt, s.max_seq_len_delta) if s.length_jitter else sample_search_seq_len(s.bptt)
        lr = s.lr * seq_len / s.bptt
        x, y = get_batch(data, i, seq_len)
        if before_step is not None:
            before_step(x, y, hidden.detach(), i, seq_len, lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss, raw_loss, hidden = regularised_loss(model, x, y, hidden.detach(), s.alpha_ar, s.beta_tar)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, s.clip)
        optimizer.step()
        for group in optimizer.param_groups:
            group["lr"] = s.lr
        hidden = hidden.detach()
        value = raw_loss.item()
        total += value * y.numel()
        count += y.numel()
        if bar is not None:
            bar.step(value, min(seq_len, data.size(0) - 1 - i))
        i += seq_len
        step += 1
    if count == 0:
        raise DataError("the training split is too short for one window at this batch size")
    return total / count
