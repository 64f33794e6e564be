"""Shift-based AdaMax (BNN Algorithm 4, papers.md §a.3), as BNN's Torch7
``adaMax_binary_clip_shift.lua`` runs it::

    m = beta1 * m + (1 - beta1) * g
    u = max(beta2 * u, |g| + eps)
    p = p - AP2(lr / (1 - beta1**t)) * m / AP2(u)

Both the bias-corrected step size and u are rounded to powers of two, so the update is m shifted.
Choices: beta1 = 0.9, beta2 = 0.999, eps = 2**-27 as the Torch7 code (the paper suggests
1 - beta1 = 2**-3, 1 - beta2 = 2**-10: pass ``betas`` for that); eps is added inside the max as in
Torch7's adamax. BNN's Glorot scale comes from the param groups (``optim.param_groups``: a group's
``lr`` is the base LR times its ``lr_scale``): the step is AP2(base lr / bc) * lr_scale, as Torch7
rounds the step and then multiplies by its Glorot-LR vector (unrounded on MNIST, ``lr_scale=glorot``;
rounded to a power of two for conv and CIFAR FC layers, ``glorot_pow2``, where the product is a
power of two again). A group without ``lr_scale`` has scale 1. Latent-weight clipping is
``LatentWeightClipper``'s, which hands it to the step (:meth:`ShiftAdaMax.fold_latent_clip`).

``fused=True`` runs the whole update of a float32 CPU parameter, the latent clip included, as one
Numba loop (read p, g, m, u once, write p, m, u once) instead of about ten tensor passes; ``fused=False`` is the tensor
reference, bit for bit the same result (tests/test_shift.py): the products are rounded one by one
(no fused multiply-add), and the step and AP2(u) are powers of two, so the division and the
multiplication by the step are exact in either order.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..jit import keeping_torch_threads
from ..quant import ap2


def _pow2(x: float) -> float:
    return 2.0 ** round(math.log2(x))


_KERNELS: dict[bool, object] = {}


def _fused_kernel(parallel: bool = True):
    """The Numba loop (compiled on first use, cached on disk); ``parallel=False`` runs on the calling
    thread alone: a job limited to one torch thread (``train.num_threads=1``, jobs side by side) then
    wakes no numba worker, whose idle OpenMP threads would spin against the other jobs (1071 against
    17 ms of CPU per Torch7-MLP step, measured with three such jobs on 2 cores)."""
    if parallel not in _KERNELS:
        import numba

        @numba.njit
        def maximum(a, b):  # torch.maximum: NaN wins
            if a != a or b != b:
                return a + b
            if a >= b:
                return a
            return b

        # error_model="numpy": a NaN u divides by 0.0 (see below) without raising
        @numba.njit(parallel=parallel, cache=True, error_model="numpy")
        def step(p, g, m, u, powers, carry, beta1, one_minus_beta1, beta2, eps, minus_step_size, lo, hi):
            for i in numba.prange(p.size):
                gi = g[i]
                mi = m[i] * beta1 + gi * one_minus_beta1
                ui = maximum(u[i] * beta2, abs(gi) + eps)
                m[i] = mi
                u[i] = ui
                # u >= 0: AP2(u)'s exponent bits; inf stays inf; a NaN u picks 0, but its m is NaN
                # too, so p turns NaN as in the reference. The bits of the local ui, not of u[i]
                # through an int32 view of u: the parallel loop may read that view before the store
                ap2_u = powers[((np.float32(ui).view(np.int32) + carry) >> 23) & 255]
                q = p[i] + minus_step_size * mi / ap2_u
                # the folded latent clip, as clamp_(lo, hi): NaN stays NaN (no clip: infinite bounds);
                q = hi if q > hi else q
                p[i] = lo if q < lo else q

        _KERNELS[parallel] = keeping_torch_threads(step)
    return _KERNELS[parallel]


def _ap2_table() -> tuple[np.ndarray, np.int32]:
    """2**(E - 127) for each biased float32 exponent E (E = 0: 0, E = 255: inf), so AP2(u) is the
    entry the exponent bits of quant.ap2 pick; and ap2's carry."""
    from ..quant.qnn import _AP2_CARRY

    powers = np.zeros(256, np.float32)
    powers[1:255] = np.exp2(np.arange(1, 255) - 127.0)
    powers[255] = np.inf
    return powers, np.int32(_AP2_CARRY)


_TABLE = _ap2_table()


def _fusable(p: torch.Tensor) -> bool:
    return p.device.type == "cpu" and p.dtype == torch.float32 and p.is_contiguous()


class ShiftAdaMax(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 2.0**-10, betas=(0.9, 0.999), eps: float = 2.0**-27,
                 fused: bool = False):
        if lr <= 0:
            raise ValueError(f"ShiftAdaMax lr={lr} must be > 0")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"ShiftAdaMax betas={betas} must be in [0, 1)")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, fused=fused))
        self._clipped: set[int] = set()

    def fold_latent_clip(self, weights) -> list[torch.Tensor]:
        """Clip these of its parameters to [-1, 1] inside each step, right after their update (the
        fused loop then writes each latent once instead of twice; the same values as a clamp_ after
        the step). Returns the weights it took; :class:`LatentWeightClipper` clips the rest."""
        own = {id(p) for group in self.param_groups for p in group["params"]}
        taken = [w for w in weights if id(w) in own]
        self._clipped.update(id(w) for w in taken)
        return taken

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
                # Torch7 rounds the bias-corrected step, then multiplies by the Glorot LR vector
                scale = group.get("lr_scale", 1.0)
                step_size = _pow2(group["lr"] / scale / (1 - beta1 ** state["step"])) * scale
                lo, hi = (-1.0, 1.0) if id(p) in self._clipped else (-math.inf, math.inf)
                if group.get("fused", False) and _fusable(p):  # a checkpoint from before the knob: no key
                    f32 = np.float32
                    kernel = _fused_kernel(parallel=torch.get_num_threads() > 1)
                    kernel(p.detach().view(-1).numpy(), p.grad.contiguous().view(-1).numpy(), m.view(-1).numpy(),
                           u.view(-1).numpy(), *_TABLE, f32(beta1), f32(1 - beta1), f32(beta2),
                           f32(group["eps"]), f32(-step_size), f32(lo), f32(hi))
                    continue
                # the products rounded one by one, as the fused loop computes them
                m.mul_(beta1).add_(p.grad * (1 - beta1))
                torch.maximum(u * beta2, p.grad.abs() + group["eps"], out=u)
                p.addcdiv_(m, ap2(u), value=-step_size)
                if id(p) in self._clipped:
                    p.clamp_(lo, hi)
        return loss
