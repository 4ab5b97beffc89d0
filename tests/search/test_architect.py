"""The architect against exact derivatives in float64 (double backward, no finite differences)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nasdeploy.search.architect import Architect, ArchitectConfig


class TinySupernet(nn.Module):
    """Two mixed layers of smooth candidate ops: small enough for exact Hessians."""

    def __init__(self, n_in: int = 5, hidden: int = 6, n_out: int = 3, n_ops: int = 3):
        super().__init__()
        self.alphas = nn.Parameter(1e-1 * torch.randn(2, n_ops))
        self.layer1 = nn.ModuleList(nn.Linear(n_in, hidden) for _ in range(n_ops))
        self.layer2 = nn.ModuleList(nn.Linear(hidden, n_out) for _ in range(n_ops))
        self.bn = nn.BatchNorm1d(hidden, affine=False)

    def arch_parameters(self):
        return [self.alphas]

    def weight_parameters(self):
        return [p for n, p in self.named_parameters() if n != "alphas"]

    def forward(self, x):
        w1, w2 = F.softmax(self.alphas, dim=-1)
        acts = (torch.tanh, torch.sin, lambda t: t)
        h = sum(w * a(op(x)) for w, a, op in zip(w1, acts, self.layer1))
        h = self.bn(h)
        return sum(w * op(torch.tanh(h)) for w, op in zip(w2, self.layer2))


def loss_fn(forward, batch):
    x, y = batch
    return F.cross_entropy(forward(x), y)


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = TinySupernet().double()
    opt = torch.optim.SGD(model.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    batches = [(torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 3, (16,))) for _ in range(3)]
    # One real weight step so the momentum buffer is non-zero and used by the virtual step.
    opt.zero_grad()
    loss_fn(model, batches[2]).backward()
    opt.step()
    return model, opt, batches[0], batches[1]


def exact_hvp(model, batch, v):
    """grad_alpha (grad_w L_train(w, alpha) . v) by double backward."""
    weights = model.weight_parameters()
    gw = torch.autograd.grad(loss_fn(model, batch), weights, create_graph=True)
    dot = sum((g * t).sum() for g, t in zip(gw, v))
    return torch.autograd.grad(dot, model.arch_parameters())


@pytest.mark.parametrize("fd_scale, max_rel_err", [(1e-2, 3e-3), (1e-3, 3e-5), (1e-4, 3e-7)])
def test_finite_difference_hessian_matches_exact_hvp(setup, fd_scale, max_rel_err):
    model, opt, train, _ = setup
    architect = Architect(model, loss_fn, opt, ArchitectConfig(order="second", fd_scale=fd_scale))
    v = [torch.randn_like(p) for p in model.weight_parameters()]
    fd = architect.hessian_term(v, train)
    exact = exact_hvp(model, train, v)
    # Central differences err by O(eps^2) with eps * ||v|| = fd_scale: the DARTS default 0.01 gives
    # ~1e-3 relative error here, and the error must shrink 100x per 10x smaller scale (measured:
    # 9.1e-4, 9.1e-6, 9.1e-8). float64 rounding (~1e-16 / fd_scale) stays far below these bounds.
    # A wrong divisor such as `/ 2 * eps` is off by a factor 4 eps^2 and fails by orders of magnitude.
    for a, b in zip(fd, exact):
        assert ((a - b).norm() / b.norm()).item() < max_rel_err


def test_second_order_gradient_matches_differentiating_through_the_virtual_step(setup):
    model, opt, train, val = setup
    eta = 0.05
    architect = Architect(model, loss_fn, opt, ArchitectConfig(order="second"))
    approx = architect.second_order_grad(train, val, eta)

    # Exact: alpha -> w'(alpha) -> L_val(w'(alpha), alpha), differentiated end to end.
    weights = model.weight_parameters()
    gw = torch.autograd.grad(loss_fn(model, train), weights, create_graph=True)
    group = opt.param_groups[0]
    unrolled = [
        w - eta * (group["momentum"] * opt.state[w]["momentum_buffer"] + g + group["weight_decay"] * w)
        for w, g in zip(weights, gw)
    ]
    names = [n for n, _ in model.named_parameters() if n != "alphas"]
    params = dict(zip(names, unrolled))
    params["alphas"] = model.alphas
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    val_loss = loss_fn(lambda x: torch.func.functional_call(model, {**params, **buffers}, (x,)), val)
    (exact,) = torch.autograd.grad(val_loss, [model.alphas])
    torch.testing.assert_close(approx[0], exact, rtol=1e-3, atol=1e-7)


def test_first_order_is_the_plain_validation_gradient(setup):
    model, opt, _, val = setup
    architect = Architect(model, loss_fn, opt, ArchitectConfig(order="first"))
    (g,) = architect.first_order_grad(val)
    (expected,) = torch.autograd.grad(loss_fn(model, val), [model.alphas])
    torch.testing.assert_close(g, expected, rtol=0, atol=0)


def test_step_moves_only_alphas_and_keeps_bn_stats(setup):
    model, opt, train, val = setup
    before = {n: t.clone() for n, t in model.state_dict().items()}
    Architect(model, loss_fn, opt, ArchitectConfig(order="second")).step(train, val, eta=0.025)
    after = model.state_dict()
    assert not torch.equal(before["alphas"], after["alphas"])
    for name in before:
        if name != "alphas":
            assert torch.equal(before[name], after[name]), name
