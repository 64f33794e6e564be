"""DoReFa-Net quantizers (Zhou et al. 2016), exactly as the official tensorpack ``dorefa.py``
(papers.md §c.3): ``quantize_k``, weights ``fw``, activations ``fa`` (with the bounded nonlinearity
in front) and gradients ``fg``.
"""
from __future__ import annotations

import torch

from .binary import Quantizer
from .registry import register


class _IdentityGradRound(torch.autograd.Function):
    """round(x * n) / n with the gradient passed unchanged (tensorpack overrides Round -> Identity)."""

    @staticmethod
    def forward(ctx, x, n):
        return torch.round(x * n) / n

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
        return torch.where(x >= 0, e, -e)

    @staticmethod
    def backward(ctx, grad):
        return grad


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
        t = torch.tanh(w)
        # clamp: an all-zero tensor would divide 0 by 0 (tensorpack gives NaN there)
        t = t / t.abs().amax().clamp_min(torch.finfo(t.dtype).tiny) * 0.5 + 0.5
        return 2 * quantize_k(t, self.precision) - 1


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
    noise = (torch.rand(g.shape, generator=generator, device=g.device, dtype=g.dtype) - 0.5) / n
    y = (g / safe * 0.5 + 0.5 + noise).clamp(0.0, 1.0)
    return (torch.round(y * n) / n - 0.5) * m * 2


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
