"""The architect on a tiny DARTS supernet in float64: finite differences vs exact double-backward HVPs."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from nasdeploy.search.architect import Architect, ArchitectConfig
from nasdeploy.search.step import classification_loss as loss_fn
from nasdeploy.spaces.darts_cnn import DartsCnnSupernet


@pytest.fixture(scope="module")
def setup():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    # Larger alphas than the 1e-3 default so that the alpha gradients are not tiny.
    model = DartsCnnSupernet(channels=4, layers=3, steps=2, multiplier=2, num_classes=3, alpha_init_scale=0.3).double()
    opt = torch.optim.SGD(model.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    batches = [(torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 3, (4,))) for _ in range(3)]
    opt.zero_grad()
    loss_fn(model, batches[2]).backward()  # a real step: the momentum buffer is non-zero
    opt.step()
    opt.zero_grad(set_to_none=True)
    yield model, opt, batches[0], batches[1]
    torch.set_num_threads(previous)


def exact_hvp(model, batch, v):
    """grad_alpha (grad_w L_train(w, alpha) . v) by double backward: the exact Hessian-vector product."""
    weights = model.weight_parameters()
    gw = torch.autograd.grad(loss_fn(model, batch), weights, create_graph=True)
    dot = sum((g * t).sum() for g, t in zip(gw, v))
    return torch.autograd.grad(dot, model.arch_parameters())


@pytest.mark.parametrize("fd_scale", [1e-6, 1e-7])
def test_finite_difference_hessian_term_matches_exact_hvp(setup, fd_scale):
    model, opt, train, _ = setup
    torch.manual_seed(1)
    v = [torch.randn_like(p) for p in model.weight_parameters()]
    fd = Architect(model, loss_fn, opt, ArchitectConfig(order="second", fd_scale=fd_scale)).hessian_term(v, train)
    exact = exact_hvp(model, train, v)
    # Tolerance 1e-6 relative, in float64. A central difference with ||eps v|| = fd_scale errs by
    # O(fd_scale^2) (truncation) plus O(1e-16 / fd_scale) (rounding): ~1e-9 at these scales (measured
    # 5e-10 at 1e-6, 5e-9 at 1e-7). The supernet is only piecewise smooth (ReLU, max-pool): a perturbation
    # that moves an activation across a kink adds an O(jump / eps) error, which is why the DARTS default
    # scale 0.01 (and, for some v, even 1e-5) is no correctness probe on a tiny float64 net: with ~1e5
    # activations some lie within 1e-5 of a kink. At 1e-6 none is crossed for these fixed seeds. A wrong
    # divisor (`/ 2 * eps`) or perturbing w' instead of w is off by O(1) and fails by orders of magnitude.
    for a, b in zip(fd, exact):
        assert b.norm() > 1e-6
        assert ((a - b).norm() / b.norm()).item() < 1e-6


def test_second_order_gradient_matches_exact_differentiation_through_the_virtual_step(setup):
    model, opt, train, val = setup
    eta = 0.05
    approx = Architect(model, loss_fn, opt, ArchitectConfig(order="second", fd_scale=1e-6)).second_order_grad(
        train, val, eta)

    names = [n for n, _ in model.named_weight_parameters()]
    weights = model.weight_parameters()
    gw = torch.autograd.grad(loss_fn(model, train), weights, create_graph=True)
    group = opt.param_groups[0]
    unrolled = [w - eta * (group["momentum"] * opt.state[w]["momentum_buffer"] + g + group["weight_decay"] * w)
                for w, g in zip(weights, gw)]
    params = dict(zip(names, unrolled))
    params.update(alphas_normal=model.alphas_normal, alphas_reduce=model.alphas_reduce)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    val_loss = loss_fn(lambda x: functional_call(model, {**params, **buffers}, (x,)), val)
    exact = torch.autograd.grad(val_loss, model.arch_parameters())
    # Only the Hessian term is approximated (central difference at fd_scale 1e-6, see above).
    for a, b in zip(approx, exact):
        assert ((a - b).norm() / b.norm()).item() < 1e-6


def test_first_order_step_moves_alphas_only(setup):
    model, opt, train, val = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Architect(model, loss_fn, opt, ArchitectConfig(order="first")).step(train, val, eta=0.025)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    bn_stats = {k for k in changed if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    # The validation forward runs in train mode (as in the reference), so BN statistics may move too.
    assert changed - bn_stats == {"alphas_normal", "alphas_reduce"}
    model.load_state_dict(before)
