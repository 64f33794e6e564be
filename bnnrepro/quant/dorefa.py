"""DoReFa-Net quantizers (Zhou et al. 2016), exactly as the official tensorpack ``dorefa.py``
(papers.md §c.3): ``quantize_k``, weights ``fw``, activations ``fa`` (with the bounded nonlinearity
in front) and gradients ``fg``.
"""
from __future__ import annotations

from functools import partial

import torch

from .base import Quantizer
from .registry import register
from .ste import ClipQuantize, IdentityGradRound, QuantizeBackward, ScaledSign, TanhQuantize


def quantize_k(x: torch.Tensor, k: int) -> torch.Tensor:
    """``round((2**k - 1) x) / (2**k - 1)`` for x in [0, 1]; straight-through gradient.
    torch.round rounds half to even, as tf.round does."""
    return IdentityGradRound.apply(x, float(2**k - 1))


@register("dorefa_weight")
class DoReFaWeight(Quantizer):
    """DoReFa ``fw``. k = 1: ``sign(w) * E|w|`` per layer, zeros -> +E, STE. k > 1:
    ``2 quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1``, the gradient flowing through tanh and the
    normalisation (the max included, as tf.reduce_max does; larq stops it there). k = 32: identity."""

    kind = "dorefa_weight"

    def __init__(self, bits: int = 1):
        super().__init__()
        self.precision = bits

    def forward(self, w):
        if self.precision == 32:
            return w
        if self.precision == 1:
            return ScaledSign.apply(w)
        # the max is clamped: an all-zero tensor would divide 0 by 0 (tensorpack gives NaN there)
        return TanhQuantize.apply(w, float(2**self.precision - 1))


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

    kind = "dorefa_activation"

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
            return ClipQuantize.apply(x, float(2**self.bits - 1))
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


@register("dorefa_gradient")
class DoReFaGradient(Quantizer):
    """DoReFa ``fg``: identity forward, the gradient quantized to k bits (stochastically) backward.
    Sits right after a quantized conv/FC, before BN (``QuantLayer.grad_quantizer``). k = 32: identity.
    ``generator`` (attribute) makes the noise reproducible."""

    kind = "gradient"

    def __init__(self, bits: int = 6, per_example: bool = True):
        super().__init__()
        self.precision = bits
        self.per_example = per_example
        self.generator: torch.Generator | None = None

    def forward(self, x):
        if self.precision == 32 or not torch.is_grad_enabled():
            return x
        return QuantizeBackward.apply(x, partial(quantize_gradient, bits=self.precision, per_example=self.per_example,
                                                 generator=self.generator))
