"""BNN quantizers (Courbariaux et al. 2016, papers.md §a.3): identity, sign and stochastic sign.

Both signs use the straight-through estimator with cancellation: the gradient passes unchanged where
|x| <= clip and is zero elsewhere (the gradient of hard-tanh). sign(0) = +1, as the packed kernels
assume (a zero bit means +1 there too).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .registry import register


def sign_pm1(x: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = +1; values are exactly +-1 in x's dtype."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0, 1)


class _SteSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, clip, stochastic, generator):
        ctx.save_for_backward(x)
        ctx.clip = clip
        if stochastic:
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            # +1 with probability hard_sigmoid(x); hard_sigmoid(x) == 1 for x >= 1, so never -1 there
            return torch.where(u < hard_sigmoid(x), torch.ones_like(x), -torch.ones_like(x))
        return sign_pm1(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        if ctx.clip is None:
            return grad, None, None, None
        return grad * (x.abs() <= ctx.clip).to(grad.dtype), None, None, None


class Quantizer(nn.Module):
    """Base class: ``precision`` in bits (32 = float) and whether latent weights are clipped."""

    precision: int = 32
    #: latent weights quantized by this are kept in [-1, 1] after each step (BinaryConnect / BNN)
    clips_latent_weights: bool = False
    allowed_bits: tuple[int, ...] | None = None

    def extra_repr(self) -> str:
        return f"precision={self.precision}"


@register("identity", "float")
class Identity(Quantizer):
    precision = 32
    allowed_bits = (32,)

    def forward(self, x):
        return x


@register("htanh", "hard_tanh")
class HardTanh(Quantizer):
    """Float hard-tanh clip(x, -1, 1): the real-valued activation that sign binarizes, so a float
    baseline of a BNN uses it in place of ``sign`` (BNN's Torch7 code: HardTanh, then binarize)."""

    precision = 32
    allowed_bits = (32,)

    def forward(self, x):
        return torch.clamp(x, -1.0, 1.0)


@register("sign", "ste_sign")
class Sign(Quantizer):
    """Deterministic sign, STE gradient cancelled where |x| > clip (``clip=None``: plain identity STE)."""

    precision = 1
    clips_latent_weights = True
    allowed_bits = (1,)

    def __init__(self, clip: float | None = 1.0):
        super().__init__()
        self.clip = clip

    def forward(self, x):
        return _SteSign.apply(x, self.clip, False, None)


@register("stochastic_sign")
class StochasticSign(Quantizer):
    """+1 with probability hard_sigmoid(x) while training; deterministic sign in eval (Torch7 BNN).

    ``eval_stochastic=True`` keeps sampling in eval mode too.
    """

    precision = 1
    clips_latent_weights = True
    allowed_bits = (1,)

    def __init__(self, clip: float | None = 1.0, eval_stochastic: bool = False):
        super().__init__()
        self.clip = clip
        self.eval_stochastic = eval_stochastic
        self.generator: torch.Generator | None = None

    def forward(self, x):
        stochastic = self.training or self.eval_stochastic
        return _SteSign.apply(x, self.clip, stochastic, self.generator)
