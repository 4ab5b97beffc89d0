"""The DARTS recurrent language model: a derived recurrent cell between tied embedding and decoder.

Shapes follow the reference implementation: tokens [T, B] (time first), hidden [1, B, nhid],
log-probabilities [T, B, ntokens]. Parameter names match it too (encoder, rnns.0._W0, rnns.0._Ws.i,
decoder), so its weights map one to one.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from nasdeploy.config.darts_rnn import DartsRnnNetworkConfig
from nasdeploy.errors import CheckpointError
from nasdeploy.genotypes import RecurrentGenotype, genotype_from_dict, resolve_genotype
from nasdeploy.ops.darts_rnn import LockedDropout, embedded_dropout, highway_update, recurrent_activation, variational_mask
from nasdeploy.utils.checkpoint import load_checkpoint, load_weights_into

NET_NAME = "language_model"  # meta["net"] of its train checkpoints
INIT_RANGE = 0.04  # uniform init range of the cell matrices (reference value)
EMBED_INIT_RANGE = 0.04  # embedding and tied decoder: the reference's INITRANGE as well (search and train)


class RecurrentCellBase(nn.Module):
    """The time loop shared by search and derived cells: variational dropout masks, W0 and s0.

    Subclasses implement `nodes(s0, h_mask, **kw) -> new hidden state` for one time step.
    """

    def __init__(self, ninp: int, nhid: int, steps: int, dropouth: float, dropoutx: float):
        super().__init__()
        self.ninp, self.nhid, self.steps = ninp, nhid, steps
        self.dropouth, self.dropoutx = dropouth, dropoutx
        self._W0 = nn.Parameter(torch.empty(ninp + nhid, 2 * nhid).uniform_(-INIT_RANGE, INIT_RANGE))
        self._Ws = nn.ParameterList(
            nn.Parameter(torch.empty(nhid, 2 * nhid).uniform_(-INIT_RANGE, INIT_RANGE)) for _ in range(steps)
        )

    def nodes(self, s0: torch.Tensor, h_mask: torch.Tensor | None, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, inputs: torch.Tensor, hidden: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs [T, B, ninp], hidden [B, nhid] -> (outputs [T, B, nhid], last hidden [B, nhid])."""
        batch = inputs.size(1)
        x_mask = h_mask = None
        if self.training:
            x_mask = variational_mask(inputs, (batch, self.ninp), self.dropoutx)
            h_mask = variational_mask(inputs, (batch, self.nhid), self.dropouth)
        x = inputs if x_mask is None else inputs * x_mask
        # [x, h] @ W0 == x @ W0[:ninp] + h @ W0[ninp:]: the input half is done for all steps at once.
        x_proj = x @ self._W0[: self.ninp]
        w_h = self._W0[self.ninp:]
        h = hidden
        outputs = []
        for t in range(inputs.size(0)):
            h_in = h if h_mask is None else h * h_mask
            s0 = highway_update(h, x_proj[t] + h_in @ w_h, torch.tanh)
            h = self.nodes(s0, h_mask, **kwargs)
            outputs.append(h)
        return torch.stack(outputs), h


class DARTSCell(RecurrentCellBase):
    """A derived recurrent cell: node i reads one predecessor with one activation (the genotype)."""

    def __init__(self, ninp: int, nhid: int, genotype: RecurrentGenotype, dropouth: float = 0.0, dropoutx: float = 0.0):
        super().__init__(ninp, nhid, genotype.steps, dropouth, dropoutx)
        self.genotype = genotype
        self._acts = [recurrent_activation(op) for op, _ in genotype.recurrent]

    def nodes(self, s0: torch.Tensor, h_mask: torch.Tensor | None, **kwargs: Any) -> torch.Tensor:
        states = [s0]
        for i, (_, pred) in enumerate(self.genotype.recurrent):
            s_prev = states[pred]
            s_in = s_prev if h_mask is None else s_prev * h_mask
            states.append(highway_update(s_prev, s_in @ self._Ws[i], self._acts[i]))
        return torch.stack([states[i] for i in self.genotype.concat], dim=-1).mean(dim=-1)


class DartsRnnLanguageModel(nn.Module):
    """Embedding (with word dropout) -> locked dropout -> recurrent cell -> locked dropout -> tied decoder."""

    def __init__(self, cell: RecurrentCellBase, ntokens: int, *, dropout: float, dropouti: float, dropoute: float):
        super().__init__()
        self.ntokens, self.emsize, self.nhid = ntokens, cell.ninp, cell.nhid
        self.dropout, self.dropouti, self.dropoute = dropout, dropouti, dropoute
        self.lockdrop = LockedDropout()
        self.encoder = nn.Embedding(ntokens, cell.ninp)
        self.rnns = nn.ModuleList([cell])
        self.decoder = nn.Linear(cell.nhid, ntokens)
        self.decoder.weight = self.encoder.weight  # tied: needs emsize == nhid
        nn.init.uniform_(self.encoder.weight, -EMBED_INIT_RANGE, EMBED_INIT_RANGE)
        nn.init.zeros_(self.decoder.bias)

    def run_cell(self, emb: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The recurrent part (search models override this to pass their architecture weights)."""
        return self.rnns[0](emb, hidden)

    def forward(self, tokens: torch.Tensor, hidden: torch.Tensor, return_h: bool = False) -> Any:
        """tokens [T, B], hidden [1, B, nhid] -> (log_probs [T, B, ntokens], hidden [1, B, nhid]).

        With return_h=True also the cell outputs before and after output dropout (for AR/TAR).
        """
        emb = embedded_dropout(self.encoder, tokens, self.dropoute if self.training else 0.0)
        emb = self.lockdrop(emb, self.dropouti)
        raw, last = self.run_cell(emb, hidden[0])
        out = self.lockdrop(raw, self.dropout)
        log_probs = F.log_softmax(self.decoder(out), dim=-1)
        if return_h:
            return log_probs, last.unsqueeze(0), raw, out
        return log_probs, last.unsqueeze(0)

    def init_hidden(self, batch_size: int) -> torch.Tensor:
        """The zero initial state [1, B, nhid]."""
        return self.encoder.weight.new_zeros(1, batch_size, self.nhid)


def build_darts_rnn_network(genotype: RecurrentGenotype | str | os.PathLike[str], ntokens: int | None = None,
                 **overrides: Any) -> DartsRnnLanguageModel:
    """The evaluation language model of a recurrent genotype (object, registry name or JSON file).

    Keyword overrides are DartsRnnNetworkConfig fields; the model carries `default_cfg` (the DartsRnnNetworkConfig used).
    """
    resolved = resolve_genotype(genotype, expected_kind=RecurrentGenotype.kind)
    base = DartsRnnNetworkConfig().to_dict()
    if ntokens is not None:
        base["ntokens"] = ntokens
    base.update(overrides)
    cfg = DartsRnnNetworkConfig.from_dict(base)
    cell = DARTSCell(cfg.emsize, cfg.nhid, resolved, cfg.dropouth, cfg.dropoutx)
    model = DartsRnnLanguageModel(cell, cfg.ntokens, dropout=cfg.dropout, dropouti=cfg.dropouti, dropoute=cfg.dropoute)
    model.default_cfg = cfg
    model.genotype = resolved
    return model


def load_darts_rnn_network(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> DartsRnnLanguageModel:
    """The evaluation model of a train checkpoint (meta: genotype, net 'language_model', net_kwargs), in eval mode."""
    ckpt = load_checkpoint(path, map_location=map_location)
    meta = ckpt.get("meta", {})
    if meta.get("net") != NET_NAME or "genotype" not in meta or "net_kwargs" not in meta:
        raise CheckpointError(f"{path} is not a recurrent language-model checkpoint (meta.net is {meta.get('net')!r})")
    model = build_darts_rnn_network(genotype_from_dict(meta["genotype"], RecurrentGenotype.kind), **meta["net_kwargs"])
    load_weights_into(model, ckpt, source=str(path))
    return model.eval()
