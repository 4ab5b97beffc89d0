"""The lean search-cell pieces equal the modules they stand for: values, gradients, running statistics, and
double backward; and they keep fewer bytes for backward."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from nasdeploy.ops import ReLUConvBN
from nasdeploy.spaces.lean_ops import bypass_max_pool, lean_preprocess, lean_preprocess_applies


def _saved_bytes(fn) -> int:
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(storages.values())


@pytest.mark.parametrize("channels_last", [False, True])
def test_lean_preprocess_equals_relu_conv_bn(channels_last):
    torch.manual_seed(0)
    module = ReLUConvBN(12, 6, 1, 1, 0, affine=False).double()
    twin = copy.deepcopy(module)
    x = torch.randn(4, 12, 5, 7, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    assert lean_preprocess_applies(module)
    ya, yb = lean_preprocess(module, xa), twin(xb)
    torch.testing.assert_close(ya, yb, rtol=0, atol=0)
    g = torch.randn_like(ya)
    ga = torch.autograd.grad(ya, [xa, module.op[1].weight], g, create_graph=True)
    gb = torch.autograd.grad(yb, [xb, twin.op[1].weight], g, create_graph=True)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(module.op[2], name), getattr(twin.op[2], name), rtol=0, atol=0)
    # Double backward (exact Hessian-vector products differentiate through it).
    v = torch.randn_like(x)
    ha = torch.autograd.grad((ga[0] * v).sum(), [xa, module.op[1].weight])
    hb = torch.autograd.grad((gb[0] * v).sum(), [xb, twin.op[1].weight])
    for a, b in zip(ha, hb):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # Plain backward (no create_graph): the lean path's own formulas.
    ya, yb = lean_preprocess(module, xa), twin(xb)
    for a, b in zip(torch.autograd.grad(ya, [xa, module.op[1].weight], g),
                    torch.autograd.grad(yb, [xb, twin.op[1].weight], g)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # The input's gradient alone (the first-order architecture step): backward passes x for the ReLU it skips.
    ya, yb = lean_preprocess(module, xa), twin(xb)
    torch.testing.assert_close(torch.autograd.grad(ya, xa, g)[0], torch.autograd.grad(yb, xb, g)[0],
                               rtol=1e-12, atol=1e-12)
    # It keeps the input and the output: fewer bytes than ReLU output + conv output + the BN's own.
    lean = _saved_bytes(lambda: lean_preprocess(module, xa))
    assert lean < _saved_bytes(lambda: twin(xb))


def test_lean_preprocess_does_not_apply_outside_batch_statistics_training():
    module = ReLUConvBN(4, 4, 1, 1, 0, affine=False)
    assert lean_preprocess_applies(module)
    assert not lean_preprocess_applies(ReLUConvBN(4, 4, 1, 1, 0, affine=True))
    with torch.no_grad():
        assert not lean_preprocess_applies(module)
    assert not lean_preprocess_applies(module.eval())


def test_bypass_max_pool_equals_max_pool_with_ties_and_keeps_no_indices():
    torch.manual_seed(0)
    x = torch.randint(0, 3, (2, 3, 6, 8)).double()  # many ties inside the 2x2 windows
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = bypass_max_pool(xa), F.max_pool2d(xb, 2, 2)
    torch.testing.assert_close(ya, yb, rtol=0, atol=0)
    g = torch.randn_like(ya)
    torch.testing.assert_close(torch.autograd.grad(ya, xa, g)[0], torch.autograd.grad(yb, xb, g)[0], rtol=0, atol=0)
    ga = torch.autograd.grad(bypass_max_pool(xa), xa, g, create_graph=True)[0]
    assert ga.requires_grad  # differentiable again under create_graph
    view = xa[:, 1:]  # a bypass part: a view of a state kept anyway
    assert _saved_bytes(lambda: bypass_max_pool(view)) == xa.untyped_storage().nbytes()
    assert _saved_bytes(lambda: F.max_pool2d(view, 2, 2)) > xa.untyped_storage().nbytes()


# (8, 10): a stride-2 DilConv on even sizes runs as an undilated conv on the even rows and columns.
@pytest.mark.parametrize("name,stride,channels_last,size", [
    ("sep_conv_3x3", 1, True, (9, 8)), ("sep_conv_5x5", 2, False, (9, 8)), ("sep_conv_3x3", 2, True, (9, 8)),
    ("sep_conv_5x5", 1, False, (9, 8)), ("dil_conv_3x3", 1, True, (9, 8)), ("dil_conv_5x5", 2, False, (9, 8)),
    ("dil_conv_5x5", 2, True, (9, 8)), ("dil_conv_3x3", 1, False, (9, 8)), ("dil_conv_5x5", 1, True, (9, 8)),
    ("dil_conv_3x3", 2, True, (8, 10)), ("dil_conv_5x5", 2, False, (8, 10)), ("dil_conv_5x5", 2, True, (8, 10))])
def test_lean_conv_body_equals_the_op_body(name, stride, channels_last, size):
    from nasdeploy.ops import build_op
    from nasdeploy.spaces.lean_ops import lean_conv_body

    torch.manual_seed(0)
    op = build_op(name, 6, stride, affine=False).double()
    twin = copy.deepcopy(op)
    layers, twin_layers = list(op.op)[1:-1], list(twin.op)[1:-1]
    body = lean_conv_body(layers)
    assert body is not None

    def eager(r):
        for layer in twin_layers:
            r = layer(r)
        return r

    x = torch.randn(4, 6, *size, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ra, rb = F.relu(x).requires_grad_(), F.relu(x).requires_grad_()
    za, zb = body(ra), eager(rb)
    torch.testing.assert_close(za, zb, rtol=0, atol=0)
    for a, b in zip(op.buffers(), twin.buffers()):  # BN running statistics and its counter
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    g = torch.randn_like(za)
    params_a, params_b = [ra, *op.parameters()], [rb, *twin.parameters()]
    for a, b in zip(torch.autograd.grad(za, params_a, g, retain_graph=True),
                    torch.autograd.grad(zb, params_b, g, retain_graph=True)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # The input's gradient alone (as the first-order architecture step asks): backward skips the depthwise
    # recomputation, passing a stand-in whose values convolution_backward must not read.
    torch.testing.assert_close(torch.autograd.grad(za, ra, g, retain_graph=True)[0],
                               torch.autograd.grad(zb, rb, g, retain_graph=True)[0], rtol=1e-12, atol=1e-12)
    # Double backward differentiates the eager definition.
    ga = torch.autograd.grad(za, params_a, g, create_graph=True)
    gb = torch.autograd.grad(zb, params_b, g, create_graph=True)
    v = torch.randn_like(x)
    # (A DilConv body is linear: its input's gradient does not depend on its input.)
    ha = torch.autograd.grad((ga[0] * v).sum(), params_a, allow_unused=True)
    hb = torch.autograd.grad((gb[0] * v).sum(), params_b, allow_unused=True)
    assert [a is None for a in ha] == [b is None for b in hb] and ha[-1] is not None
    for a, b in zip(ha, hb):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # It keeps its input only, not a SepConv's five intermediates or a DilConv's depthwise output.
    lean, full = _saved_bytes(lambda: body(ra)), _saved_bytes(lambda: eager(rb))
    out = za.numel() * za.element_size()
    assert lean <= ra.numel() * ra.element_size() + 4096
    assert full >= lean + (4 * out if name.startswith("sep") else out)


def test_lean_conv_body_leaves_other_bodies_to_the_eager_path():
    from nasdeploy.ops import build_op
    from nasdeploy.spaces.lean_ops import lean_conv_body

    assert lean_conv_body(list(build_op("sep_conv_3x3", 4, 1, affine=True).op)[1:-1]) is None  # affine BN
    op = build_op("sep_conv_3x3", 4, 1, affine=False).eval()  # BN in eval mode: not batch statistics
    assert lean_conv_body(list(op.op)[1:-1]) is None
    assert lean_conv_body(list(build_op("dil_conv_3x3", 4, 1, affine=False).op)[1:-1]) is not None
    widening = build_op("dil_conv_3x3", 4, 1, affine=False)
    widening.op[2] = torch.nn.Conv2d(4, 8, 1, bias=False)  # its 1x1 conv's input would differ from grad's shape
    assert lean_conv_body(list(widening.op)[1:-1]) is None
    with torch.no_grad():
        assert lean_conv_body(list(build_op("sep_conv_3x3", 4, 1, affine=False).op)[1:-1]) is None


@pytest.mark.parametrize("size", [8, 7])
@pytest.mark.parametrize("lean", [False, True])
def test_factorized_body_equals_factorized_reduce_without_relu_and_bn(size, lean):
    """The fused mixer's FactorizedReduce body (the lean one reads the shifted branch as a view on even sizes)."""
    from nasdeploy.ops import FactorizedReduce
    from nasdeploy.spaces.fused_mixer import _factorized_body

    torch.manual_seed(0)
    op = FactorizedReduce(4, 6, affine=False).double()
    body = _factorized_body(op, lean)
    r = F.relu(torch.randn(2, 4, size, size, dtype=torch.float64)).requires_grad_()
    shifted = F.pad(r[:, :, 1:, 1:], (0, 1, 0, 1))
    want = torch.cat([op.conv_1(r), op.conv_2(shifted)], dim=1)
    got = body(r)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)
    g = torch.randn_like(want)
    params = [r, op.conv_1.weight, op.conv_2.weight]
    for a, b in zip(torch.autograd.grad(got, params, g), torch.autograd.grad(want, params, g)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    if lean and size % 2 == 0:  # no padded copy kept: only r's storage (and the weights)
        kept = _saved_bytes(lambda: body(r))
        assert kept <= r.numel() * r.element_size() + 2 * op.conv_2.weight.numel() * 8
