"""The fused mixed-node operator: torch.library op from the extension, with autograd and a fake kernel.

`mixed_node(xs, strides, zs, weights, terms)` computes  sum_t w[t] * y_t  in one reduction launch
(see csrc/mixed_node.h for the term kinds) and returns (out, mean, invstd): the batch statistics of
the terms that carry a BatchNorm, so the caller can update running statistics. Backward yields the
gradients of every edge input, every z and the weights in one pass, recomputing normalised values
and pool outputs instead of storing them.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch

from nasdeploy.kernels.build import BuildInfo, load_extension
from nasdeploy.kernels.reference import reference_mixed_node
from nasdeploy.kernels.terms import STAT_KINDS, Term, TermKind

FWD = "nasdeploy::mixed_node_fwd"
BWD = "nasdeploy::mixed_node_bwd"


def _memory_format(ref: torch.Tensor) -> torch.memory_format:
    # Must agree with pick_format() in mixed_node_ops.cpp so fake and real strides match.
    if not ref.is_contiguous() and ref.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _node_shape(xs: Sequence[torch.Tensor], strides: Sequence[int], zs: Sequence[torch.Tensor], edges: Sequence[int]):
    if zs:
        return tuple(zs[0].shape)
    x, s = xs[edges[0]], strides[edges[0]]
    return (x.shape[0], x.shape[1], (x.shape[2] - 1) // s + 1, (x.shape[3] - 1) // s + 1)


def _fake_fwd(xs, strides, zs, weights, kinds, edges, wcols, eps):
    ref = zs[0] if zs else xs[0]
    shape = _node_shape(xs, strides, zs, edges)
    n_stats = sum(1 for k in kinds if k in STAT_KINDS)
    out = torch.empty(shape, dtype=ref.dtype, device=ref.device, memory_format=_memory_format(ref))
    mean = ref.new_empty((n_stats, shape[1]))
    return out, mean, torch.empty_like(mean)


def _fake_bwd(grad, xs, strides, zs, weights, kinds, edges, wcols, mean, invstd):
    ref = zs[0] if zs else xs[0]
    fmt = _memory_format(ref)
    grad_xs = [torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt) for x in xs]
    grad_zs = [torch.empty(z.shape, dtype=z.dtype, device=z.device, memory_format=fmt) for z in zs]
    return grad_xs, grad_zs, torch.empty(weights.shape, dtype=weights.dtype, device=weights.device)


def _setup_context(ctx, inputs, output) -> None:
    xs, strides, zs, weights, kinds, edges, wcols, eps = inputs
    _out, mean, invstd = output
    ctx.save_for_backward(*xs, *zs, weights, mean, invstd)
    ctx.layout = (len(xs), len(zs), list(strides), list(kinds), list(edges), list(wcols), eps)
    ctx.mark_non_differentiable(mean, invstd)


def _differentiable_grads(grad_out, xs, strides, zs, weights, terms, eps):
    # create_graph=True (e.g. exact Hessian-vector products): the fused backward has no derivative
    # of its own, so differentiate the eager definition instead; first-order training never gets here.
    # Fresh views: a tensor passed twice (say as an edge input and as a raw z) must get its partial
    # gradient per argument, as the fused backward gives, not the total in both places.
    inputs = [t.view_as(t) for t in (*xs, *zs, weights)]
    xs_v, zs_v, w_v = inputs[:len(xs)], inputs[len(xs):len(xs) + len(zs)], inputs[-1]
    wanted = [t for t in inputs if t.requires_grad]
    out, _, _ = reference_mixed_node(xs_v, strides, zs_v, w_v, terms, eps)
    found = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True))
    grads = [next(found) if t.requires_grad else None for t in inputs]
    return grads[:len(xs)], grads[len(xs):len(xs) + len(zs)], grads[-1]


def _backward(ctx, grad_out, _grad_mean, _grad_invstd):
    n_x, n_z, strides, kinds, edges, wcols, eps = ctx.layout
    saved = ctx.saved_tensors
    xs, zs = list(saved[:n_x]), list(saved[n_x:n_x + n_z])
    weights, mean, invstd = saved[n_x + n_z:]
    if grad_out is None:
        return None, None, None, None, None, None, None, None
    if torch.is_grad_enabled():
        terms = [Term(TermKind(k), e, w) for k, e, w in zip(kinds, edges, wcols)]
        grad_xs, grad_zs, grad_w = _differentiable_grads(grad_out, xs, strides, zs, weights, terms, eps)
    else:
        grad_xs, grad_zs, grad_w = torch.ops.nasdeploy.mixed_node_bwd(
            grad_out, xs, strides, zs, weights, kinds, edges, wcols, mean, invstd)
    return list(grad_xs), None, list(grad_zs), grad_w, None, None, None, None


@functools.lru_cache(maxsize=1)
def load_mixed_node() -> BuildInfo:
    """Build/load the extension once and register the op's autograd and fake kernels."""
    info = load_extension()
    torch.library.register_fake(FWD)(_fake_fwd)
    torch.library.register_fake(BWD)(_fake_bwd)
    torch.library.register_autograd(FWD, _backward, setup_context=_setup_context)
    return info


def mixed_node(
    xs: Sequence[torch.Tensor],
    strides: Sequence[int],
    zs: Sequence[torch.Tensor],
    weights: torch.Tensor,
    terms: Sequence[Term],
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, mean, invstd): out = sum over terms of weights.view(-1)[wcol] * y_term; z terms take zs in order."""
    load_mixed_node()
    return torch.ops.nasdeploy.mixed_node_fwd(
        list(xs), [int(s) for s in strides], list(zs), weights,
        [int(t.kind) for t in terms], [t.edge for t in terms], [t.wcol for t in terms], float(eps))
