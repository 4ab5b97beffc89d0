"""The DARTS recurrent architect: the unrolled architecture gradient with the weight step's clipping.

The recurrent search clips every weight gradient to norm `clip` (0.25 at the published settings), so
the virtual step the second-order gradient differentiates through is clipped too, as in the DARTS
recurrent reference implementation:

- g = grad_w L_train(w, alpha), c = min(1, clip / (||g|| + 1e-6)); w' = w - eta * (c g + wd w [+ mu buf]);
- v = grad_{w'} L_val(w', alpha), clipped to norm `clip` the same way;
- grad_alpha = grad_alpha L_val(w', alpha) - eta * c * H(v), H the central difference of
  grad_alpha L_train around w along v (Architect.hessian_term); c is held constant, as the reference.

Without the clipping, at lr 20 the implicit term is tens to a hundred times too large. The first-order
gradient is the plain d L_val / d alpha (Architect.first_order_grad).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from nasdeploy.errors import ConfigError
from nasdeploy.search.architect import Architect, ArchitectConfig, LossFn


def clip_coefficient(grads: Sequence[torch.Tensor], max_norm: float) -> float:
    """The factor clip_grad_norm_ would scale `grads` by: min(1, max_norm / (||grads||_2 + 1e-6)).

    Capped at 1: the reference's `_clip` returns max_norm / (norm + 1e-6) even when it exceeds 1 (it
    then leaves the gradients alone but still scales the implicit term up by it); here a gradient
    below the clip norm is used as it is, in both places.
    """
    total = torch.sqrt(sum((g.detach().double() ** 2).sum() for g in grads))
    return min(1.0, float(max_norm / (total + 1e-6)))


class RecurrentArchitect(Architect):
    """The DARTS architect for the recurrent search: the virtual step and v clipped to `clip`."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, weight_optimizer: torch.optim.Optimizer,
                 config: ArchitectConfig = ArchitectConfig(), clip: float = 0.25):
        super().__init__(model, loss_fn, weight_optimizer, config)
        if not clip > 0:
            raise ConfigError(f"architect gradient clip must be positive, got {clip}")
        self.clip = float(clip)

    def clipped_virtual_step(self, train_batch: Any, eta: float) -> tuple[list[torch.Tensor], float]:
        """(w', c): w' = w - eta * (c * grad_w L_train + wd * w [+ momentum * buf]), c the clip coefficient."""
        weights = self._weights()
        loss = self.loss_fn(self._functional_forward(weights), train_batch)
        grads = torch.autograd.grad(loss, weights)
        coef = clip_coefficient(grads, self.clip)
        group_of = {id(p): g for g in self.weight_optimizer.param_groups for p in g["params"]}
        unrolled = []
        for w, g in zip(weights, grads):
            group = group_of.get(id(w), {})
            momentum = group.get("momentum", 0.0)
            step = coef * g + group.get("weight_decay", 0.0) * w.detach()
            buf = self.weight_optimizer.state.get(w, {}).get("momentum_buffer")
            if buf is not None and momentum:
                step = step + momentum * buf
            unrolled.append((w.detach() - eta * step).requires_grad_(True))
        return unrolled, coef

    def second_order_grad(self, train_batch: Any, val_batch: Any, eta: float) -> list[torch.Tensor]:
        """grad_a L_val(w', a) - eta * c * H(clip(v)), the unrolled gradient through the clipped step."""
        unrolled, coef = self.clipped_virtual_step(train_batch, eta)
        loss = self.loss_fn(self._functional_forward(unrolled), val_batch)
        grads = torch.autograd.grad(loss, self.arch_params + unrolled)
        d_alpha, v = list(grads[: len(self.arch_params)]), list(grads[len(self.arch_params):])
        v_coef = clip_coefficient(v, self.clip)
        hessian = self.hessian_term([t * v_coef for t in v], train_batch)
        return [g - eta * coef * h for g, h in zip(d_alpha, hessian)]


__all__ = ["RecurrentArchitect", "clip_coefficient"]
