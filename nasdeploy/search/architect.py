"""The DARTS architect: first-order and second-order (unrolled) architecture gradients.

Generic over search spaces: the model exposes `arch_parameters()` and `weight_parameters()`, and a
loss function `loss_fn(forward, batch) -> scalar` evaluates a batch with a given forward callable
(the model itself, or the model run functionally with other weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol, Sequence

import torch
from torch import nn
from torch.func import functional_call

from nasdeploy.errors import ConfigError

LossFn = Callable[[Callable[..., Any], Any], torch.Tensor]


class ArchCost(Protocol):
    """A term on the architecture loss that depends on the alphas only (e.g. search.cost.ExpectedCost)."""

    def combine(self, loss: torch.Tensor, arch_params: Sequence[torch.Tensor]) -> torch.Tensor:
        """The validation loss with the term applied."""
        ...


@dataclass(frozen=True)
class ArchitectConfig:
    """Architecture optimiser settings (DARTS CNN defaults: Adam 3e-4, betas (0.5, 0.999), wd 1e-3)."""

    order: Literal["first", "second"] = "first"
    lr: float = 3e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 1e-3
    fd_scale: float = 0.01  # eps = fd_scale / ||v||

    def __post_init__(self) -> None:
        if self.order not in ("first", "second"):
            raise ConfigError(f"architect order must be 'first' or 'second', got {self.order!r}")
        if self.lr <= 0 or self.fd_scale <= 0:
            raise ConfigError("architect lr and fd_scale must be positive")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


class Architect:
    """Computes architecture gradients and steps the architecture optimiser."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, weight_optimizer: torch.optim.Optimizer,
                 config: ArchitectConfig = ArchitectConfig(), cost: ArchCost | None = None):
        self.model = model
        self.cost = cost  # applied to the validation loss only: w' and the Hessian term use L_train
        self.core = _unwrap(model)
        self.loss_fn = loss_fn
        self.weight_optimizer = weight_optimizer
        self.config = config
        self.arch_params = list(self.core.arch_parameters())
        arch_ids = {id(p) for p in self.arch_params}
        self.weight_names = [n for n, p in self.core.named_parameters() if id(p) not in arch_ids and p.requires_grad]
        self.arch_names = [n for n, p in self.core.named_parameters() if id(p) in arch_ids]
        self.optimizer = torch.optim.Adam(self.arch_params, lr=config.lr, betas=config.betas,
                                          weight_decay=config.weight_decay)
        self.last_loss: torch.Tensor | None = None  # the architecture loss of the latest gradient (detached)

    # -- gradients ---------------------------------------------------------------------------
    def _weights(self) -> list[torch.Tensor]:
        params = dict(self.core.named_parameters())
        return [params[n] for n in self.weight_names]

    def _functional_forward(self, weights: list[torch.Tensor]) -> Callable[..., Any]:
        """A forward with the given weight tensors, the live alphas, and throwaway buffer copies."""
        buffers = {n: b.clone() for n, b in self.core.named_buffers()}
        params = dict(zip(self.weight_names, weights))
        params.update(dict(zip(self.arch_names, self.arch_params)))

        def forward(*args: Any, **kwargs: Any) -> Any:
            return functional_call(self.core, {**params, **buffers}, args, kwargs, strict=False)

        return forward

    def first_order_grad(self, val_batch: Any) -> list[torch.Tensor]:
        """d L_val(w, alpha) / d alpha."""
        # The unwrapped module: a DDP wrapper would wait for a backward() that autograd.grad never runs;
        # alpha gradients are all-reduced explicitly in step().
        loss = self._val_loss(self.loss_fn(self.core, val_batch))
        self.last_loss = loss.detach()
        return list(torch.autograd.grad(loss, self.arch_params))

    def _val_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The validation loss with the cost term, when there is one."""
        return loss if self.cost is None else self.cost.combine(loss, self.arch_params)

    def virtual_step(self, train_batch: Any, eta: float) -> list[torch.Tensor]:
        """w' = w - eta * (momentum * buf + grad_w L_train + wd * w), with the weight optimiser's state."""
        weights = self._weights()
        loss = self.loss_fn(self._functional_forward(weights), train_batch)
        grads = torch.autograd.grad(loss, weights)
        group_of = {id(p): g for g in self.weight_optimizer.param_groups for p in g["params"]}
        unrolled = []
        for w, g in zip(weights, grads):
            group = group_of.get(id(w), {})
            momentum = group.get("momentum", 0.0)
            wd = group.get("weight_decay", 0.0)
            buf = self.weight_optimizer.state.get(w, {}).get("momentum_buffer")
            step = g + wd * w.detach()
            if buf is not None and momentum:
                step = step + momentum * buf
            unrolled.append((w.detach() - eta * step).requires_grad_(True))
        return unrolled

    def hessian_term(self, v: list[torch.Tensor], train_batch: Any) -> list[torch.Tensor]:
        """Finite-difference [grad_a L_train(w+) - grad_a L_train(w-)] / (2 eps), w+- = w +- eps v."""
        norm = torch.sqrt(sum((t.detach().double() ** 2).sum() for t in v))
        eps = float(self.config.fd_scale / norm)
        weights = [w.detach() for w in self._weights()]
        plus = [w + eps * t.detach() for w, t in zip(weights, v)]
        minus = [w - eps * t.detach() for w, t in zip(weights, v)]
        g_plus = torch.autograd.grad(self.loss_fn(self._functional_forward(plus), train_batch), self.arch_params)
        g_minus = torch.autograd.grad(self.loss_fn(self._functional_forward(minus), train_batch), self.arch_params)
        return [(a - b) / (2 * eps) for a, b in zip(g_plus, g_minus)]

    def second_order_grad(self, train_batch: Any, val_batch: Any, eta: float) -> list[torch.Tensor]:
        """grad_a L_val(w', a) - eta * H v, the unrolled DARTS gradient."""
        unrolled = self.virtual_step(train_batch, eta)
        loss = self._val_loss(self.loss_fn(self._functional_forward(unrolled), val_batch))
        self.last_loss = loss.detach()
        grads = torch.autograd.grad(loss, self.arch_params + unrolled)
        d_alpha, v = list(grads[: len(self.arch_params)]), list(grads[len(self.arch_params):])
        hessian = self.hessian_term(v, train_batch)
        return [g - eta * h for g, h in zip(d_alpha, hessian)]

    # -- step ----------------------------------------------------------------------------------
    def step(self, train_batch: Any, val_batch: Any, eta: float) -> torch.Tensor:
        """One architecture step: gradient (first or second order), all-reduced under DDP, Adam update.

        Returns the architecture (validation) loss the gradient came from, detached: this rank's value,
        at w for first order and at the unrolled w' for second order; no extra forward is needed to log it.
        """
        if self.config.order == "first":
            grads = self.first_order_grad(val_batch)
        else:
            grads = self.second_order_grad(train_batch, val_batch, eta)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            for g in grads:
                torch.distributed.all_reduce(g)
                g.div_(world)
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(self.arch_params, grads):
            p.grad = g.detach().clone()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self.last_loss
