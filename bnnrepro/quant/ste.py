"""Every custom autograd Function of the quantizers: the straight-through estimators (STE) and the
fused quantize-and-differentiate nodes. The quantizer modules (binary, dorefa, qnn, projections)
only choose which of these to apply.

* :class:`SteSign`: sign (optionally hard-sigmoid stochastic) with the gradient cancelled where
  |x| > clip (BNN);
* :class:`Ste` / :func:`ste`: forward any ``fn(x)``, backward the gradient inside a window (QNN);
* :class:`StraightThrough` / :func:`straight_through`: forward a tensor computed outside, backward
  the identity (BinaryConnect-style projections);
* :class:`IdentityGradRound`, :class:`ScaledSign`, :class:`TanhQuantize`, :class:`ClipQuantize`:
  DoReFa's ``quantize_k``, ``fw`` (k = 1 and k > 1) and ``quantize_k(clip(x, 0, 1))``;
* :class:`QuantizeBackward`: identity forward, ``fn(grad)`` backward (DoReFa's ``fg``).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..jit import keeping_torch_threads


def sign_pm1(x: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = +1 (-0.0 too); values are exactly +-1 in x's dtype; NaN gives -1, as the
    packed kernels' bits do (kernels/bitpack.py). Computed as 2 [x >= 0] - 1 on one buffer, a few
    times faster on CPU than ``where(x >= 0, 1, -1)``, whose kernel is not vectorised."""
    return (x >= 0).to(x.dtype).mul_(2).sub_(1)


_SIGN_KERNELS: dict[bool, object] = {}


def _sign_kernel(parallel: bool):
    """The Numba loop of :func:`sign_pm1_counting` (compiled on first use, cached on disk);
    ``parallel=False`` for a process limited to one torch thread, as the fused shift-AdaMax."""
    if parallel not in _SIGN_KERNELS:
        import numba

        @numba.njit(parallel=parallel, cache=True, boundscheck=False)
        def sign_into(x, out, lo, hi):
            outside = 0
            for i in numba.prange(x.size):
                v = x[i]
                out[i] = 1.0 if v >= 0 else -1.0  # NaN: -1, as sign_pm1
                outside += 0 if lo <= v <= hi else 1
            return outside

        one, half, zero = np.float32(1.0), np.float32(0.5), np.float32(0.0)

        @numba.njit(parallel=parallel, cache=True, boundscheck=False)
        def stochastic_sign_into(x, u, out):
            # +1 where u < hard_sigmoid(x), computed in float32 as hard_sigmoid() does (NaN: -1)
            for i in numba.prange(x.size):
                p = (x[i] + one) * half
                p = one if p > one else p
                p = zero if p < zero else p
                out[i] = 1.0 if u[i] < p else -1.0

        _SIGN_KERNELS[parallel] = keeping_torch_threads(sign_into), keeping_torch_threads(stochastic_sign_into)
    return _SIGN_KERNELS[parallel]


def _one_pass(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous()


def sign_pm1_counting(x: torch.Tensor, clip: float | None) -> tuple[torch.Tensor, bool]:
    """(``sign_pm1(x)``, whether every x is within [-clip, clip]) in one pass for a contiguous
    float32 CPU tensor (other tensors: torch ops, and False). One Numba loop reads x once and writes
    the +-1 once; torch's compare, bool-to-float and two in-place passes stream a weight-sized
    tensor five times (about 12x slower for a 2048x2048 latent weight on 2 Zen 4 cores)."""
    if not _one_pass(x):
        return sign_pm1(x), False
    out = torch.empty_like(x)
    lo, hi = (math.inf, -math.inf) if clip is None else (-clip, clip)  # no clip: count everything
    sign_into = _sign_kernel(torch.get_num_threads() > 1)[0]
    outside = sign_into(x.detach().view(-1).numpy(), out.view(-1).numpy(), lo, hi)
    return out, outside == 0


def stochastic_sign(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """+1 where ``u < hard_sigmoid(x)``, -1 elsewhere (NaN x: -1): one Numba pass over a contiguous
    float32 CPU tensor, five torch passes otherwise."""
    if not (_one_pass(x) and _one_pass(u)):
        # p - u > 0 exactly when u < p, and sign(p - u) - 1/2 has the sign wanted (NaN x:
        # torch.sign(NaN) is 0, so -1, as u < NaN is false)
        return hard_sigmoid(x).sub_(u).sign_().sub_(0.5).sign_()
    out = torch.empty_like(x)
    _sign_kernel(torch.get_num_threads() > 1)[1](x.detach().view(-1).numpy(), u.view(-1).numpy(), out.view(-1).numpy())
    return out


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return (x + 1).mul_(0.5).clamp_(0, 1)  # = ((x + 1) / 2).clamp(0, 1), on one buffer


_OUTWARD: dict[tuple, float] = {}


def _outward(value: float, dtype: torch.dtype, up: bool) -> float:
    """The next ``dtype`` number after ``value``, upwards or downwards (cached)."""
    key = (value, dtype, up)
    if key not in _OUTWARD:
        v = torch.tensor(value, dtype=dtype)
        _OUTWARD[key] = torch.nextafter(v, torch.tensor(math.inf if up else -math.inf, dtype=dtype)).item()
    return _OUTWARD[key]


def window_grad(grad: torch.Tensor, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``grad`` where ``lo <= x <= hi`` (bounds included), 0 elsewhere: the straight-through
    estimator's cancellation. One fused kernel (aten's hardtanh_backward, which excludes its bounds,
    given bounds one ulp outside [lo, hi]) instead of building a boolean mask, which is several
    times slower on CPU; other dtypes take the mask."""
    if x.dtype in (torch.float32, torch.float64) and grad.dtype == x.dtype:
        return torch.ops.aten.hardtanh_backward(grad, x, _outward(lo, x.dtype, False), _outward(hi, x.dtype, True))
    return grad * ((x >= lo) & (x <= hi))


class SteSign(torch.autograd.Function):
    """sign(x) (sign(0) = +1), or +1 with probability hard_sigmoid(x) when ``stochastic``; backward:
    the gradient where |x| <= clip, 0 elsewhere (``clip=None``: everywhere)."""

    @staticmethod
    def forward(ctx, x, clip, stochastic, generator):
        ctx.save_for_backward(x)
        ctx.clip = clip
        if stochastic:
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            # +1 with probability hard_sigmoid(x) (u < p; p == 1 for x >= 1, so never -1 there)
            ctx.inside = False
            return stochastic_sign(x, u)
        # inside: nothing to cancel, so the backward passes the gradient without a pass over it
        # (a BNN latent weight, clipped to [-1, 1] after every step, always is)
        out, ctx.inside = sign_pm1_counting(x, ctx.clip)
        return out

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        if ctx.clip is None or ctx.inside:
            return grad, None, None, None
        return window_grad(grad, x, -ctx.clip, ctx.clip), None, None, None


class Ste(torch.autograd.Function):
    """Forward ``fn(x)``; backward passes the gradient where ``lo <= x <= hi`` (everywhere if None).

    ``fn`` runs inside forward, so whatever it computes from ``x`` (a scale, a max) carries no
    gradient, and the output is exactly ``fn(x)`` (no ``x + (q - x).detach()`` rounding error).
    """

    @staticmethod
    def forward(ctx, x, fn, lo, hi):
        ctx.window = (lo, hi)
        if lo is not None:
            ctx.save_for_backward(x)
        return fn(x)

    @staticmethod
    def backward(ctx, grad):
        lo, hi = ctx.window
        if lo is None:
            return grad, None, None, None
        (x,) = ctx.saved_tensors
        return window_grad(grad, x, lo, hi), None, None, None


def ste(x: torch.Tensor, fn, clip: float | None = None) -> torch.Tensor:
    """``fn(x)`` with the straight-through gradient, cancelled where |x| > clip (None: never)."""
    return Ste.apply(x, fn, None if clip is None else -clip, clip)


class StraightThrough(torch.autograd.Function):
    """Forward: the projected tensor (computed outside, without autograd); backward: identity."""

    @staticmethod
    def forward(ctx, w, projected):
        return projected

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def straight_through(w: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
    return StraightThrough.apply(w, projected.detach())


class IdentityGradRound(torch.autograd.Function):
    """round(x * n) / n with the gradient passed unchanged (tensorpack overrides Round -> Identity)."""

    @staticmethod
    def forward(ctx, x, n):
        return (x * n).round_().div_(n)  # = round(x * n) / n, one allocation

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class ScaledSign(torch.autograd.Function):
    """BWN forward ``where(x == 0, 1, sign(x)) * E``, E = mean|x| over the whole tensor (one scalar
    per layer, no gradient through it); backward: identity."""

    @staticmethod
    def forward(ctx, x):
        e = x.abs().mean()
        # copysign, not where(x >= 0, e, -e) (several times slower on CPU); + 0.0 turns -0.0 into
        # +0.0, so that zeros map to +E either way
        return torch.copysign(e, x + 0.0)

    @staticmethod
    def backward(ctx, grad):
        return grad


class TanhQuantize(torch.autograd.Function):
    """DoReFa ``fw`` for k > 1 as one autograd node (fewer temporaries than the op-by-op graph):
    forward ``2 quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1``, bit for bit the formula's float
    result; backward the gradient autograd gives that formula: straight through the rounding,
    through tanh and the normalisation, the max included (split evenly among tied maxima, as
    ``amax`` does; no gradient through the max when every weight is 0)."""

    @staticmethod
    def forward(ctx, w, n):
        t = torch.tanh(w)
        a = t.abs()
        m = a.amax().clamp_min(torch.finfo(t.dtype).tiny)
        ctx.save_for_backward(t, a, m)
        # 2 round(n (t/M * 1/2 + 1/2)) / n - 1 computed as round((t/M + 1) * n/2) / (n/2) - 1: the
        # same float result (scaling by 1/2 or 2 is exact and commutes with rounding; n/2 is exact)
        # in 6 operations on one buffer instead of 8
        return (t / m).add_(1).mul_(n / 2).round_().div_(n / 2).sub_(1)

    @staticmethod
    def backward(ctx, g):
        t, a, m = ctx.saved_tensors
        # y = 2 round(n (t / 2M + 1/2)) / n - 1 with STE: dy/dt = g / M, and through M = max|t|:
        # dL/dM = -sum(g t) / M^2, routed to the maxima of |t| with the sign of t (= t / M there)
        # the maxima as a float mask (|t| <= M: sign(|t| - M) + 1 is 1 at a maximum, 0 elsewhere;
        # no slow boolean mask); none when M was clamped (all-zero weights)
        ties = (a - m).sign_().add_(1)
        count = ties.sum()
        through_max = torch.where(count > 0, (g * t).sum() / (m * m) / count.clamp_min(1), 0.0)
        grad_t = (g - ties.mul_(t).mul_(through_max)).mul_(m.reciprocal())
        return grad_t.mul_((t * t).neg_().add_(1)), None  # tanh' = 1 - tanh^2 (t * t: square is slower)


class ClipQuantize(torch.autograd.Function):
    """``quantize_k(clip(x, 0, 1))`` as one node: forward ``round(n clip(x, 0, 1)) / n`` on one
    buffer; backward clip's gradient (1 on [0, 1], inclusive, 0 elsewhere) times the identity STE."""

    @staticmethod
    def forward(ctx, x, n):
        ctx.save_for_backward(x)
        return x.clamp(0.0, 1.0).mul_(n).round_().div_(n)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return window_grad(g, x, 0.0, 1.0), None


class QuantizeBackward(torch.autograd.Function):
    """Identity forward; backward ``fn(grad)`` (the gradient quantizer, DoReFa's ``fg``)."""

    @staticmethod
    def forward(ctx, x, fn):
        ctx.fn = fn
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return ctx.fn(grad), None
