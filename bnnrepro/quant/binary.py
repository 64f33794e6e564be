"""BNN quantizers (Courbariaux et al. 2016, papers.md §a.3): identity, sign and stochastic sign.

Both signs use the straight-through estimator with cancellation: the gradient passes unchanged where
|x| <= clip and is zero elsewhere (the gradient of hard-tanh). sign(0) = +1, as the packed kernels
assume (a zero bit means +1 there too).
"""
from __future__ import annotations

import torch

from .base import Quantizer
from .registry import register
from .ste import SteSign, hard_sigmoid, sign_pm1

__all__ = ["HardTanh", "Identity", "Sign", "StochasticSign", "hard_sigmoid", "sign_pm1"]


@register("identity", "float")
class Identity(Quantizer):
    precision = 32
    kind = "identity"
    allowed_bits = (32,)

    def forward(self, x):
        return x


@register("htanh", "hard_tanh")
class HardTanh(Quantizer):
    """Float hard-tanh clip(x, -1, 1): the real-valued activation that sign binarizes, so a float
    baseline of a BNN uses it in place of ``sign`` (BNN's Torch7 code: HardTanh, then binarize)."""

    precision = 32
    kind = "hard_tanh"
    allowed_bits = (32,)

    def forward(self, x):
        return torch.clamp(x, -1.0, 1.0)


@register("sign", "ste_sign")
class Sign(Quantizer):
    """Deterministic sign, STE gradient cancelled where |x| > clip (``clip=None``: plain identity STE)."""

    precision = 1
    kind = "sign"
    clips_latent_weights = True
    allowed_bits = (1,)

    def __init__(self, clip: float | None = 1.0):
        super().__init__()
        self.clip = clip

    def sampling(self) -> bool:
        """Whether forward samples now (never: the sign is deterministic)."""
        return False

    def forward(self, x):
        return SteSign.apply(x, self.clip, False, None)


@register("stochastic_sign")
class StochasticSign(Quantizer):
    """+1 with probability hard_sigmoid(x) while training; deterministic sign in eval (Torch7 BNN).

    ``eval_stochastic=True`` keeps sampling in eval mode too.
    """

    precision = 1
    kind = "sign"
    clips_latent_weights = True
    allowed_bits = (1,)

    def __init__(self, clip: float | None = 1.0, eval_stochastic: bool = False):
        super().__init__()
        self.clip = clip
        self.eval_stochastic = eval_stochastic
        self.generator: torch.Generator | None = None

    def sampling(self) -> bool:
        """Whether forward samples now (training, or ``eval_stochastic``) rather than take the sign."""
        return self.training or self.eval_stochastic

    def forward(self, x):
        return SteSign.apply(x, self.clip, self.sampling(), self.generator)
