"""Shift-based AdaMax (BNN Algorithm 4, papers.md §a.3), as BNN's Torch7
``adaMax_binary_clip_shift.lua`` runs it::

    m = beta1 * m + (1 - beta1) * g
    u = max(beta2 * u, |g| + eps)
    p = p - AP2(lr / (1 - beta1**t)) * m / AP2(u)

Both the bias-corrected step size and u are rounded to powers of two, so the update is m shifted.
Choices: beta1 = 0.9, beta2 = 0.999, eps = 2**-27 as the Torch7 code (the paper suggests
1 - beta1 = 2**-3, 1 - beta2 = 2**-10: pass ``betas`` for that); eps is added inside the max as in
Torch7's adamax. The learning rate is each param group's ``lr`` (so BNN's Glorot scale is applied
by putting layers in groups, ``optim.param_groups``): with a Torch7-style power-of-two scale
(``glorot_pow2``) the rounded step equals Torch7's AP2(lr / bc) * scale exactly; an unrounded scale
is rounded together with lr. Latent-weight clipping is left to ``LatentWeightClipper``.
"""
from __future__ import annotations

import math

import torch

from ..quant import ap2


def _pow2(x: float) -> float:
    return 2.0 ** round(math.log2(x))


class ShiftAdaMax(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 2.0**-10, betas=(0.9, 0.999), eps: float = 2.0**-27):
        if lr <= 0:
            raise ValueError(f"ShiftAdaMax lr={lr} must be > 0")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"ShiftAdaMax betas={betas} must be in [0, 1)")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_inf"] = torch.zeros_like(p)
                state["step"] += 1
                m, u = state["exp_avg"], state["exp_inf"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                torch.maximum(u * beta2, p.grad.abs() + group["eps"], out=u)
                step_size = _pow2(group["lr"] / (1 - beta1 ** state["step"]))
                p.addcdiv_(m, ap2(u), value=-step_size)
        return loss
