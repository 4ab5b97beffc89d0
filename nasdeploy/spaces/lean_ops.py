"""Search-cell pieces that keep fewer tensors for backward, recomputing the cheap parts instead.

- The cells' preprocessing ReLU -> 1x1 conv -> BN (no affine, batch statistics) keeps its input and its output
  only: the ReLU output (the conv's input) is recomputed in backward, and BN's backward is written in terms of
  its output (without affine, the output is the normalised input). The input is the previous cell's output,
  which both cells after it preprocess, so one tensor is kept where there were four (two ReLU outputs, two
  conv outputs); the output is a state the cell keeps anyway (the mixer's or the PC-DARTS bypass's input).
- The 2x2 max pool of a PC-DARTS stride-2 bypass keeps its input (a view of a state the cell keeps anyway)
  instead of int64 argmax indices, twice the bytes of its output; backward finds the maxima again.
- The conv candidates of PC-DARTS's narrow parts (the fused mixer with FusionOptions.recompute_op_bodies) keep only
  their input (the state's ReLU, kept anyway) and, for SepConv, their middle BN's output: four intermediates of a
  SepConv and one of a DilConv are not kept. A depthwise output is read only by the next 1x1 conv's weight
  gradient, so backward recomputes it only when that gradient is wanted: the weight step, not the first-order
  architecture step (autograd.grad over the alphas), which passes a tensor of the same shape whose values
  convolution_backward does not read.

Values and BatchNorm running statistics equal the modules they stand for, gradients too (up to rounding where BN's
backward is taken from its output). Under create_graph (an exact Hessian-vector product) their backward
differentiates the eager definition instead.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nasdeploy.ops import ReLUConvBN


def _eager_grads(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], grad: torch.Tensor,
                 needed: Sequence[bool]) -> list[torch.Tensor | None]:
    """Gradients of fn(*inputs) by differentiating it (create_graph=True: these backwards have no derivative of
    their own). Fresh views keep the partial gradient of each argument apart."""
    views = [t.view_as(t) for t in inputs]
    wanted = [v for v, need in zip(views, needed) if need]
    found = iter(torch.autograd.grad(fn(*views), wanted, grad, create_graph=True, allow_unused=True))
    return [next(found) if need else None for need in needed]


def lean_preprocess_applies(module: nn.Module) -> bool:
    """Whether `module` is a ReLU -> conv -> BN whose training forward lean_preprocess computes exactly."""
    if not isinstance(module, ReLUConvBN):
        return False
    conv, bn = module.op[1], module.op[2]
    return (isinstance(conv, nn.Conv2d) and conv.bias is None and conv.padding_mode == "zeros"
            and isinstance(bn, nn.BatchNorm2d) and not bn.affine and bn.training and bn.track_running_stats
            and bn.momentum is not None and bn.running_mean is not None and torch.is_grad_enabled())


def lean_preprocess(module: ReLUConvBN, x: torch.Tensor) -> torch.Tensor:
    """module(x) for a module lean_preprocess_applies to, keeping only x and the output for backward."""
    conv, bn = module.op[1], module.op[2]
    bn.num_batches_tracked.add_(1)
    return _ReluConvNorm.apply(x, conv.weight, conv, bn)


def _conv(conv: nn.Conv2d, r: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.conv2d(r, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)


class _ReluConvNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
        c = _conv(conv, F.relu(x), weight)
        y, _mean, invstd = torch.native_batch_norm(c, None, None, bn.running_mean, bn.running_var, True, bn.momentum,
                                                   bn.eps)
        ctx.save_for_backward(x, weight, y, invstd)
        ctx.conv, ctx.eps = conv, bn.eps
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, y, invstd = ctx.saved_tensors
        conv, needed = ctx.conv, ctx.needs_input_grad[:2]
        if torch.is_grad_enabled():
            def eager(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
                return F.batch_norm(_conv(conv, F.relu(x), w), None, None, None, None, True, 0.0, ctx.eps)

            return (*_eager_grads(eager, (x, weight), grad, needed), None, None)
        dims = (0, 2, 3)
        # BN backward without affine, from its output y (= the normalised input).
        grad_c = (grad - grad.mean(dims, keepdim=True) - y * (grad * y).mean(dims, keepdim=True)) * invstd.view(1, -1, 1, 1)
        grad_r, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_c, F.relu(x), weight, None, list(conv.stride), list(conv.padding), list(conv.dilation), False, [0, 0],
            conv.groups, [needed[0], needed[1], False])
        grad_x = torch.ops.aten.threshold_backward(grad_r, x, 0.0) if needed[0] else None
        return grad_x, grad_w, None, None


def bypass_max_pool(x: torch.Tensor) -> torch.Tensor:
    """F.max_pool2d(x, 2, 2), keeping x (not the argmax indices) for backward."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return F.max_pool2d(x, 2, 2)
    return _MaxPool2x2.apply(x)


class _MaxPool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return F.max_pool2d(x, 2, 2)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _eager_grads(lambda t: F.max_pool2d(t, 2, 2), (x,), grad, (True,))[0]
        _, indices = F.max_pool2d(x, 2, 2, return_indices=True)
        return torch.ops.aten.max_pool2d_with_indices_backward(grad, x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices)





def lean_conv_body(layers: Sequence[nn.Module]) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The body of a SepConv ([dw, pw, BN, ReLU, dw, pw]) or a DilConv ([dw, pw]) after its first ReLU and before its
    last BN, as a function that keeps for backward only its input (and a SepConv's middle BN output); None: not such
    a body, or not a training forward it computes exactly."""
    if (torch.is_grad_enabled() and len(layers) == 2 and all(_plain_conv(m) for m in layers)
            and layers[1].in_channels == layers[1].out_channels):
        dw, pw = layers
        return lambda r: _LeanDilBody.apply(r, dw.weight, pw.weight, (dw, pw))
    if not (torch.is_grad_enabled() and len(layers) == 6 and isinstance(layers[3], nn.ReLU)
            and _batch_stats_norm(layers[2]) and all(_plain_conv(layers[i]) for i in (0, 1, 4, 5))):
        return None
    dw1, pw1, bn, _, dw2, pw2 = layers
    convs = (dw1, pw1, dw2, pw2)

    def body(r: torch.Tensor) -> torch.Tensor:
        bn.num_batches_tracked.add_(1)
        return _LeanSepBody.apply(r, dw1.weight, pw1.weight, dw2.weight, pw2.weight, convs, bn)

    return body


def _plain_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.bias is None and m.padding_mode == "zeros"


def _batch_stats_norm(bn: nn.Module) -> bool:
    return (isinstance(bn, nn.BatchNorm2d) and not bn.affine and bn.training and bn.track_running_stats
            and bn.momentum is not None and bn.running_mean is not None)


def _sep_body_eager(r: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor, w4: torch.Tensor,
                    convs: Sequence[nn.Conv2d], eps: float) -> torch.Tensor:
    """The body's definition, differentiable (running statistics untouched)."""
    y = F.batch_norm(_conv(convs[1], _conv(convs[0], r, w1), w2), None, None, None, None, True, 0.0, eps)
    return _conv(convs[3], _conv(convs[2], F.relu(y), w3), w4)


class _LeanSepBody(torch.autograd.Function):
    """Keeps r and the middle BN's output y; backward recomputes both depthwise convs' outputs and relu(y), and takes
    BN's backward from y (without affine, y is the normalised input): the eager modules' values, and their gradients
    up to rounding."""

    @staticmethod
    def forward(ctx: Any, r: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor, w4: torch.Tensor,
                convs: tuple[nn.Conv2d, ...], bn: nn.BatchNorm2d) -> torch.Tensor:
        y, _mean, invstd = torch.native_batch_norm(_conv(convs[1], _conv(convs[0], r, w1), w2), None, None,
                                                   bn.running_mean, bn.running_var, True, bn.momentum, bn.eps)
        ctx.convs, ctx.eps = convs, bn.eps
        ctx.save_for_backward(r, w1, w2, w3, w4, y, invstd)
        return _conv(convs[3], _conv(convs[2], F.relu(y), w3), w4)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        r, w1, w2, w3, w4, y, invstd = ctx.saved_tensors
        convs, needed = ctx.convs, ctx.needs_input_grad[:5]
        # Under autograd.grad(loss, alphas) (the first-order architect) the conv weights need no gradient; the
        # eager convs skip theirs, and so does this.
        needed = _engine_needs(ctx, needed)
        if torch.is_grad_enabled():
            grads = _eager_grads(lambda *t: _sep_body_eager(*t, convs, ctx.eps), (r, w1, w2, w3, w4), grad, needed)
            return (*grads, None, None)
        d = F.relu(y)
        # The 1x1 convs' inputs (the depthwise outputs) are read only for their weight gradients; otherwise y and d,
        # of the same shapes and layouts, stand in for them.
        grad, g4 = _conv_backward(convs[3], grad, _conv(convs[2], d, w3) if needed[4] else d, w4, True, needed[4])
        grad, g3 = _conv_backward(convs[2], grad, d, w3, True, needed[3])
        grad = torch.ops.aten.threshold_backward(grad, d, 0.0)
        # BN's backward in terms of its output: y as the input with mean 0 and invstd 1, then the real invstd.
        grad = torch.ops.aten.native_batch_norm_backward(grad, y, None, None, None, torch.zeros_like(invstd),
                                                         torch.ones_like(invstd), True, ctx.eps,
                                                         [True, False, False])[0]
        grad, g2 = _conv_backward(convs[1], grad * invstd.view(1, -1, 1, 1), _conv(convs[0], r, w1) if needed[2] else y,
                                  w2, True, needed[2])
        grad_r, g1 = _conv_backward(convs[0], grad, r, w1, needed[0], needed[1])
        return grad_r, g1, g2, g3, g4, None, None


class _LeanDilBody(torch.autograd.Function):
    """A DilConv's dilated depthwise -> 1x1 conv keeping only its input r; backward recomputes the depthwise output
    when the 1x1 conv's weight gradient is wanted (the same values and gradients as the eager convs)."""

    @staticmethod
    def forward(ctx: Any, r: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, convs: tuple[nn.Conv2d, ...]
                ) -> torch.Tensor:
        ctx.convs = convs
        ctx.save_for_backward(r, w1, w2)
        return _conv(convs[1], _conv(convs[0], r, w1), w2)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        r, w1, w2 = ctx.saved_tensors
        convs, needed = ctx.convs, ctx.needs_input_grad[:3]
        needed = _engine_needs(ctx, needed)
        if torch.is_grad_enabled():
            eager = lambda *t: _conv(convs[1], _conv(convs[0], t[0], t[1]), t[2])  # noqa: E731
            return (*_eager_grads(eager, (r, w1, w2), grad, needed), None)
        # The 1x1 conv keeps channels and size, so grad has its input's shape: it stands in when only grad_r is wanted.
        grad, g2 = _conv_backward(convs[1], grad, _conv(convs[0], r, w1) if needed[2] else grad, w2, True, needed[2])
        grad_r, g1 = _conv_backward(convs[0], grad, r, w1, needed[0], needed[1])
        return grad_r, g1, g2, None


def _engine_needs(ctx: Any, needed: Sequence[bool]) -> tuple[bool, ...]:
    """needed (ctx.needs_input_grad), with the weights (inputs 1, 2, ...) whose gradients the running backward does not
    use turned off; a weight counts as used when this cannot tell (it is an input of autograd.grad)."""
    edges = ctx.next_functions  # the node's own edges: no view per weight, as get_gradient_edge would make

    def used(i: int) -> bool:
        try:
            return bool(torch._C._will_engine_execute_node(edges[i][0]))
        except (RuntimeError, AttributeError, TypeError):
            return True

    return (needed[0], *(need and used(i) for i, need in enumerate(needed) if i > 0))


def _conv_backward(conv: nn.Conv2d, grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, need_x: bool,
                   need_w: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    gx, gw, _ = torch.ops.aten.convolution_backward(grad, x, weight, None, list(conv.stride), list(conv.padding),
                                                    list(conv.dilation), False, [0, 0], conv.groups,
                                                    [need_x, need_w, False])
    return gx, gw
