"""DoReFa-Net quantizers (Zhou et al. 2016), exactly as the official tensorpack ``dorefa.py``
(papers.md §c.3): ``quantize_k``, weights ``fw``, activations ``fa`` (with the bounded nonlinearity
in front) and gradients ``fg``.
"""
from __future__ import annotations

import math

import torch

from .binary import Quantizer
from .registry import register

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


class _IdentityGradRound(torch.autograd.Function):
    """round(x * n) / n with the gradient passed unchanged (tensorpack overrides Round -> Identity)."""

    @staticmethod
    def forward(ctx, x, n):
        return (x * n).round_().div_(n)  # = round(x * n) / n, one allocation

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def quantize_k(x: torch.Tensor, k: int) -> torch.Tensor:
    """``round((2**k - 1) x) / (2**k - 1)`` for x in [0, 1]; straight-through gradient.
    torch.round rounds half to even, as tf.round does."""
    return _IdentityGradRound.apply(x, float(2**k - 1))


class _ScaledSign(torch.autograd.Function):
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


class _TanhQuantize(torch.autograd.Function):
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


@register("dorefa_weight")
class DoReFaWeight(Quantizer):
    """DoReFa ``fw``. k = 1: ``sign(w) * E|w|`` per layer, zeros -> +E, STE. k > 1:
    ``2 quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1``, the gradient flowing through tanh and the
    normalisation (the max included, as tf.reduce_max does; larq stops it there). k = 32: identity."""

    def __init__(self, bits: int = 1):
        super().__init__()
        self.precision = bits

    def forward(self, w):
        if self.precision == 32:
            return w
        if self.precision == 1:
            return _ScaledSign.apply(w)
        # the max is clamped: an all-zero tensor would divide 0 by 0 (tensorpack gives NaN there)
        return _TanhQuantize.apply(w, float(2**self.precision - 1))


class _ClipQuantize(torch.autograd.Function):
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


@register("dorefa_activation")
class DoReFaActivation(Quantizer):
    """DoReFa ``fa(h(x))``: a bounded nonlinearity h, then ``quantize_k`` (k = A).

    ``nonlin='clip'`` (default): ``h(x) = clip(x, 0, 1)``, the paper's and tensorpack's AlexNet
    choice; with k = 32 it is plain ReLU (tensorpack: "still use relu for 32bit cases").
    ``nonlin='cabs'``: ``h(x) = min(1, |x|)``, what tensorpack's SVHN script uses (``cabs``), kept
    as-is at k = 32. Gradients are autograd's of h (zero outside its linear part) times the
    straight-through quantize_k. ``quantize=False`` applies h alone (the clipped, unquantized input
    of DoReFa's last FC layer).
    """

    def __init__(self, bits: int = 2, nonlin: str = "clip", quantize: bool = True):
        super().__init__()
        if nonlin not in ("clip", "cabs"):
            raise ValueError(f"dorefa_activation nonlin={nonlin!r} is unknown; allowed: clip, cabs")
        self.precision = bits if quantize else 32
        self.bits = bits
        self.nonlin = nonlin
        self.quantize = quantize

    def extra_repr(self) -> str:
        return f"precision={self.precision}, nonlin={self.nonlin}"

    def forward(self, x):
        if self.nonlin == "cabs":
            x = x.abs().clamp(max=1.0)
        elif self.bits == 32:
            return torch.relu(x)
        elif self.quantize:
            return _ClipQuantize.apply(x, float(2**self.bits - 1))
        else:
            x = x.clamp(0.0, 1.0)
        if not self.quantize or self.bits == 32:
            return x
        return quantize_k(x, self.bits)


def quantize_gradient(g: torch.Tensor, bits: int, per_example: bool = True,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """DoReFa ``fg`` backward: ``2M [quantize_k(g / 2M + 1/2 + N) - 1/2]``, clipped to [0, 1] after
    the noise N ~ U(-0.5, 0.5) / (2**k - 1); M = max|g| over all axes but the batch axis
    (``per_example``) or over the whole tensor. Unbiased: E[result] = g. Where M = 0 the result
    is 0 (tensorpack would divide by zero)."""
    n = float(2**bits - 1)
    dims = tuple(range(1, g.dim())) if per_example else tuple(range(g.dim()))
    m = g.abs().amax(dim=dims, keepdim=True) if dims else g.abs()
    safe = torch.where(m > 0, m, torch.ones_like(m))
    # the formula's float operations in their order, in place on two buffers (noise, y)
    noise = torch.rand(g.shape, generator=generator, device=g.device, dtype=g.dtype).sub_(0.5).div_(n)
    y = (g / safe).mul_(0.5).add_(0.5).add_(noise).clamp_(0.0, 1.0)
    return y.mul_(n).round_().div_(n).sub_(0.5).mul_(m).mul_(2)


class _QuantizeGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bits, per_example, generator):
        ctx.args = (bits, per_example, generator)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return quantize_gradient(grad, *ctx.args), None, None, None


@register("dorefa_gradient")
class DoReFaGradient(Quantizer):
    """DoReFa ``fg``: identity forward, the gradient quantized to k bits (stochastically) backward.
    Sits right after a quantized conv/FC, before BN (``QuantLayer.grad_quantizer``). k = 32: identity.
    ``generator`` (attribute) makes the noise reproducible."""

    def __init__(self, bits: int = 6, per_example: bool = True):
        super().__init__()
        self.precision = bits
        self.per_example = per_example
        self.generator: torch.Generator | None = None

    def forward(self, x):
        if self.precision == 32 or not torch.is_grad_enabled():
            return x
        return _QuantizeGrad.apply(x, self.precision, self.per_example, self.generator)
