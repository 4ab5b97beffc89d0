"""Search-cell pieces that keep fewer tensors for backward, recomputing the cheap parts instead.

- The cells' preprocessing ReLU -> 1x1 conv -> BN (no affine, batch statistics) keeps its input and its output
  only: the ReLU output (the conv's input) is recomputed in backward, and BN's backward is written in terms of
  its output (without affine, the output is the normalised input). The input is the previous cell's output,
  which both cells after it preprocess, so one tensor is kept where there were four (two ReLU outputs, two
  conv outputs); the output is a state the cell keeps anyway (the mixer's or the PC-DARTS bypass's input).
- The 2x2 max pool of a PC-DARTS stride-2 bypass keeps its input (a view of a state the cell keeps anyway)
  instead of int64 argmax indices, twice the bytes of its output; backward finds the maxima again.
- The conv candidates of PC-DARTS's narrow parts (the fused mixer with FusionOptions.recompute_op_bodies) keep only
  their input (the state's ReLU, kept anyway): the five intermediates of a SepConv and the one of a DilConv are
  recomputed in backward. A depthwise output read only by the next 1x1 conv's weight gradient is recomputed only
  when that gradient is wanted: the weight step, not the first-order architecture step (autograd.grad over the
  alphas), which passes a tensor of the same shape whose values convolution_backward does not read (the
  preprocessing skips its ReLU recomputation there too).
- Their backward avoids oneDNN's slow paths on the CPU: the input gradient of a stride-1 depthwise conv is the
  forward conv of the gradient with the kernel flipped, a reduction edge's DilConv (stride 2, dilation 2) runs on
  inputs of even size as an undilated stride-1 conv of the even rows and columns, and a 1x1 conv's gradients on
  channels-last tensors are two matrix products.

Values and BatchNorm running statistics equal the modules they stand for, gradients too (up to rounding where BN's
backward is taken from its output or a conv's input gradient from a flipped kernel). Under create_graph (an exact
Hessian-vector product) their backward differentiates the eager definition instead.
"""

from __future__ import annotations

from dataclasses import dataclass
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
        conv, needed = ctx.conv, _engine_needs(ctx, ctx.needs_input_grad[:2])
        if torch.is_grad_enabled():
            def eager(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
                return F.batch_norm(_conv(conv, F.relu(x), w), None, None, None, None, True, 0.0, ctx.eps)

            return (*_eager_grads(eager, (x, weight), grad, needed), None, None)
        dims = (0, 2, 3)
        # BN backward without affine, from its output y (= the normalised input).
        grad_c = (grad - grad.mean(dims, keepdim=True) - y * (grad * y).mean(dims, keepdim=True)) * invstd.view(1, -1, 1, 1)
        # The conv's input (the ReLU of x) is read only for its weight gradient, which the first-order architecture
        # step does not want; then x, of the same shape and layout, stands in for it.
        grad_r, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_c, F.relu(x) if needed[1] else x, weight, None, list(conv.stride), list(conv.padding),
            list(conv.dilation), False, [0, 0], conv.groups, [needed[0], needed[1], False])
        grad_x = torch.ops.aten.threshold_backward(grad_r, x, 0.0) if needed[0] else None
        return grad_x, grad_w, None, None


def _norm_backward_from_output(grad: torch.Tensor, y: torch.Tensor, invstd: torch.Tensor, eps: float) -> torch.Tensor:
    """The input gradient of a batch-statistics BN without affine, from its output y (the normalised input): aten's
    BN backward of y as an input with mean 0 and invstd 1, the real invstd entering as the affine weight, in one
    pass."""
    return torch.ops.aten.native_batch_norm_backward(grad, y, invstd, None, None, torch.zeros_like(invstd),
                                                     torch.ones_like(invstd), True, eps, [True, False, False])[0]


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
    last BN, as a function that keeps for backward only its input; None: not such a body, or not a training forward it
    computes exactly."""
    if (torch.is_grad_enabled() and len(layers) == 2 and all(_plain_conv(m) for m in layers)
            and layers[1].in_channels == layers[1].out_channels):
        dw, pw = layers
        even = _even_grid_conv(dw)
        if even is None:
            return lambda r: _LeanDilBody.apply(r, dw.weight, pw.weight, (dw, pw))

        def dil_body(r: torch.Tensor) -> torch.Tensor:
            if r.shape[2] % 2 or r.shape[3] % 2:
                return _LeanDilBody.apply(r, dw.weight, pw.weight, (dw, pw))
            return _LeanDilBody.apply(r[:, :, ::2, ::2], dw.weight, pw.weight, (even, pw))

        return dil_body
    if not (torch.is_grad_enabled() and len(layers) == 6 and isinstance(layers[3], nn.ReLU)
            and _batch_stats_norm(layers[2]) and all(_plain_conv(layers[i]) for i in (0, 1, 4, 5))):
        return None
    dw1, pw1, bn, _, dw2, pw2 = layers
    convs = (dw1, pw1, dw2, pw2)

    def body(r: torch.Tensor) -> torch.Tensor:
        bn.num_batches_tracked.add_(1)
        return _LeanSepBody.apply(r, dw1.weight, pw1.weight, dw2.weight, pw2.weight, convs, bn)

    return body


@dataclass(frozen=True)
class _ConvGeometry:
    """What _conv and _conv_backward read of an nn.Conv2d, for a conv computed on other terms than its module's."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int


def _even_grid_conv(conv: nn.Conv2d) -> _ConvGeometry | None:
    """A stride-2, dilation-2 depthwise conv with padding k - 1 (a reduction edge's DilConv) reads the even rows and
    columns of its input only, each output from a k x k block of them: on inputs of even size it is the stride-1,
    undilated conv with padding (k - 1) / 2 of x[:, :, ::2, ::2], which this returns (None: not such a conv). The
    same sums, and far cheaper to differentiate: oneDNN's backward of the dilated strided depthwise conv takes a
    slow path (3-11 ms where the forward takes 0.1)."""
    k = conv.kernel_size
    if not (conv.groups == conv.in_channels == conv.out_channels and tuple(conv.stride) == (2, 2)
            and tuple(conv.dilation) == (2, 2) and isinstance(conv.padding, tuple)
            and tuple(conv.padding) == (k[0] - 1, k[1] - 1) and k[0] % 2 == 1 and k[1] % 2 == 1):
        return None
    return _ConvGeometry(conv.in_channels, conv.out_channels, tuple(k), (1, 1), (k[0] // 2, k[1] // 2), (1, 1),
                         conv.groups)


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
    """Keeps only r; backward recomputes the first depthwise -> 1x1 conv -> BN (the same batch statistics, so the same
    y), relu(y) and, for the second 1x1 conv's weight gradient, the second depthwise output, and takes BN's backward
    from y (without affine, y is the normalised input): the eager modules' values, and their gradients up to
    rounding."""

    @staticmethod
    def forward(ctx: Any, r: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor, w4: torch.Tensor,
                convs: tuple[nn.Conv2d, ...], bn: nn.BatchNorm2d) -> torch.Tensor:
        y = torch.native_batch_norm(_conv(convs[1], _conv(convs[0], r, w1), w2), None, None, bn.running_mean,
                                    bn.running_var, True, bn.momentum, bn.eps)[0]
        ctx.convs, ctx.eps = convs, bn.eps
        ctx.save_for_backward(r, w1, w2, w3, w4)
        return _conv(convs[3], _conv(convs[2], F.relu(y), w3), w4)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        r, w1, w2, w3, w4 = ctx.saved_tensors
        convs, needed = ctx.convs, ctx.needs_input_grad[:5]
        # Under autograd.grad(loss, alphas) (the first-order architect) the conv weights need no gradient; the
        # eager convs skip theirs, and so does this.
        needed = _engine_needs(ctx, needed)
        if torch.is_grad_enabled():
            grads = _eager_grads(lambda *t: _sep_body_eager(*t, convs, ctx.eps), (r, w1, w2, w3, w4), grad, needed)
            return (*grads, None, None)
        h = _conv(convs[0], r, w1)
        y, _mean, invstd = torch.native_batch_norm(_conv(convs[1], h, w2), None, None, None, None, True, 0.0, ctx.eps)
        d = F.relu(y)
        # The second 1x1 conv's input (the second depthwise output) is read only for its weight gradient; otherwise d,
        # of the same shape and layout, stands in for it.
        grad, g4 = _conv_backward(convs[3], grad, _conv(convs[2], d, w3) if needed[4] else d, w4, True, needed[4])
        grad, g3 = _conv_backward(convs[2], grad, d, w3, True, needed[3])
        grad = torch.ops.aten.threshold_backward(grad, d, 0.0)
        grad = _norm_backward_from_output(grad, y, invstd, ctx.eps)
        grad, g2 = _conv_backward(convs[1], grad, h, w2, True, needed[2])
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
    if need_x and _same_size_depthwise(conv):
        # The input gradient of a stride-1 "same" depthwise conv is the forward conv of grad with the kernel flipped:
        # the same sums, and on the CPU 1.3-8x faster than convolution_backward's depthwise input gradient (oneDNN
        # takes a slow path for dilated and 5x5 kernels; scripts/bench_pcdarts.py measures the step).
        gx = F.conv2d(grad, weight.flip([2, 3]), None, 1, conv.padding, conv.dilation, conv.groups)
        return gx, _conv_backward(conv, grad, x, weight, False, True)[1] if need_w else None
    if _pointwise(conv) and _channels_last_dense(grad) and _channels_last_dense(x):
        # A 1x1 conv on channels-last tensors is a matrix product over the pixels: its gradients are two GEMMs on
        # views, 1.6-2.7x faster than convolution_backward at PC-DARTS's narrow widths.
        g2 = grad.permute(0, 2, 3, 1).reshape(-1, grad.shape[1])
        gx = ((g2 @ weight.view(weight.shape[0], -1)).view(x.shape[0], x.shape[2], x.shape[3], -1).permute(0, 3, 1, 2)
              if need_x else None)
        gw = (g2.t() @ x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])).view_as(weight) if need_w else None
        return gx, gw
    gx, gw, _ = torch.ops.aten.convolution_backward(grad, x, weight, None, list(conv.stride), list(conv.padding),
                                                    list(conv.dilation), False, [0, 0], conv.groups,
                                                    [need_x, need_w, False])
    return gx, gw


def _pointwise(conv: nn.Conv2d) -> bool:
    return (tuple(conv.kernel_size) == (1, 1) and tuple(conv.stride) == (1, 1) and isinstance(conv.padding, tuple)
            and tuple(conv.padding) == (0, 0) and conv.groups == 1)


def _channels_last_dense(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)


def _same_size_depthwise(conv: nn.Conv2d) -> bool:
    """Whether conv is a depthwise conv whose output has its input's size (stride 1, padding dilation * (k - 1) / 2)."""
    return (conv.groups == conv.in_channels == conv.out_channels and tuple(conv.stride) == (1, 1)
            and isinstance(conv.padding, tuple)
            and all(2 * p == d * (k - 1) for p, d, k in zip(conv.padding, conv.dilation, conv.kernel_size)))
