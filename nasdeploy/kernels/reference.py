"""The fused mixed-node operator written with plain torch ops: its definition, for tests and double backward."""

from __future__ import annotations

from typing import Sequence

import torch
from torch.nn import functional as F

from nasdeploy.kernels.terms import STAT_KINDS, Term, TermKind


def reference_mixed_node(
    xs: Sequence[torch.Tensor],
    strides: Sequence[int],
    zs: Sequence[torch.Tensor],
    weights: torch.Tensor,
    terms: Sequence[Term],
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, mean, invstd) exactly as mixed_node defines them, differentiable to any order."""
    flat = weights.reshape(-1)
    z_iter = iter(zs)
    out: torch.Tensor | None = None
    means, invstds = [], []
    for t in terms:
        x, s = xs[t.edge], int(strides[t.edge])
        if t.kind in (TermKind.RAW, TermKind.BATCH_NORM):
            pre = next(z_iter)
        elif t.kind == TermKind.MAX_POOL_BN:
            pre = F.max_pool2d(x, 3, s, 1)
        elif t.kind == TermKind.AVG_POOL_BN:
            pre = F.avg_pool2d(x, 3, s, 1, count_include_pad=False)
        else:
            pre = x
        y = pre
        if t.kind in STAT_KINDS:
            mean = pre.mean(dim=(0, 2, 3))
            invstd = torch.rsqrt(pre.var(dim=(0, 2, 3), unbiased=False) + eps)
            y = (pre - mean[None, :, None, None]) * invstd[None, :, None, None]
            means.append(mean)
            invstds.append(invstd)
        term = flat[t.wcol] * y
        out = term if out is None else out + term
    if out is None:
        raise ValueError("mixed_node needs at least one term")
    channels = out.shape[1]
    empty = out.new_empty((0, channels))
    mean_t = torch.stack(means) if means else empty
    invstd_t = torch.stack(invstds) if invstds else empty
    return out, mean_t.detach(), invstd_t.detach()
