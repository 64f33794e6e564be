"""Merolla et al. (2016) training-time weight projections P(w), BinaryConnect style (papers.md §d).

The layer computes its forward and backward pass with P(w) and the optimizer updates the real w:
every projection here therefore passes the gradient straight through (dL/dw := dL/dP(w), no
derivative of P), as BinaryConnect applies the gradient of the binary weights to the real ones.

* ``clip``: ``P(w) = clip(w, -c, c)`` (c = 1). Clipping is the point of this projection, so it
  sets ``clips_latent_weights``: the optimizer keeps w in [-1, 1] and gives the layer BNN's Glorot
  LR scale and U(-1, 1) init, exactly like the sign-trained nets; only the projection differs.
* ``power``: ``P(w) = sign(w) |a_k w|^beta`` with the per-layer normaliser ``a_k = 1/max|w_k|``
  (maps layer k into [-1, 1], the survey's reading of the paper's table); beta -> 0 is sign,
  beta = 1 is the normalised identity.
* ``stochastic_projection`` (our reading of the paper's proposed rule, whose form is [U]): the power
  projection with a *random* exponent drawn per weight and per forward pass, so training sees the
  whole family between binarization and identity. ``beta=uniform``: beta_i ~ U(beta_min, beta_max)
  (default U(0, 1)); ``beta=bernoulli``: beta_i = 0 (sign) with probability ``p``, else 1 (identity),
  a per-weight mixture of binarization and the real weight. In eval mode the layer uses the
  expectation of P over beta (closed forms below): a mean-field net, as BinaryConnect's stochastic
  nets are tested with their real weights (E[stochastic sign(w)] = w).

``power`` and ``stochastic_projection`` clip latent weights by default (BinaryConnect's heuristic:
projection plus clipping); ``clip_latent=False`` (``quant.weight_kwargs.clip_latent=false``) turns
that off for one projection, to separate the effect of the projection from that of clipping.
* ``stochastic_binary``: BinaryConnect's stochastic binarization, +1 with probability
  hard_sigmoid(w) in training, and at test time its expectation E[P(w)] = clip(w, -1, 1), the real
  weights, as BinaryConnect tests its stochastic nets. BNN's ``stochastic_sign`` instead tests with
  the deterministic sign(w); with BN after every layer that net is a different one from the
  trained one (BN's running statistics are those of the sampled weights): on MNIST 19% error
  against 3% for the same weights tested by their expectation. ``eval_mode=sign`` gives that back.

``none`` is the registry's ``identity`` (no clipping, Glorot init); ``sign`` is BNN's (binary.py).
"""
from __future__ import annotations

import torch

from .base import Quantizer
from .binary import StochasticSign
from .registry import register
from .ste import straight_through

NORMS = ("max", "none")
BETA_DISTRIBUTIONS = ("uniform", "bernoulli")
EVAL_MODES = ("mean", "sign", "sample")


def normalised_magnitude(w: torch.Tensor, norm: str) -> torch.Tensor:
    """``|a_k w|`` with ``a_k = 1/max|w|`` (``max``; an all-zero layer stays zero) or 1 (``none``)."""
    t = w.detach().abs()
    if norm == "max":
        return t / t.amax().clamp_min(torch.finfo(t.dtype).tiny)
    return t


def signs(w: torch.Tensor) -> torch.Tensor:
    """+-1 with sign(0) = +1, as everywhere in bnnrepro."""
    return torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))


def power_projection(w: torch.Tensor, beta, norm: str = "max") -> torch.Tensor:
    """``sign(w) |a_k w|^beta`` (no gradient); ``beta`` a number or a tensor of w's shape.
    0^0 = 1, so beta = 0 gives exactly sign(w) with sign(0) = +1."""
    return signs(w) * normalised_magnitude(w, norm).pow(beta)


def expected_power(t: torch.Tensor, beta_min: float, beta_max: float) -> torch.Tensor:
    """``E[t^beta]`` for beta ~ U(beta_min, beta_max), t in [0, 1]: ``(t^hi - t^lo) / ((hi - lo) ln t)``;
    t = 1 gives 1, t = 0 gives 0 (1 if the interval is the point 0), a point interval gives t^lo."""
    lo, hi = float(beta_min), float(beta_max)
    if hi - lo < 1e-12:
        return t.pow(lo)
    log_t = torch.log(t)
    safe = torch.where((t > 0) & (t < 1), log_t, -torch.ones_like(t))
    mean = (t.pow(hi) - t.pow(lo)) / ((hi - lo) * safe)
    return torch.where(t >= 1, torch.ones_like(t), torch.where(t <= 0, torch.zeros_like(t), mean))


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} is unknown; allowed: {', '.join(NORMS)}")


@register("clip")
class Clip(Quantizer):
    """``clip(w, -c, c)``, straight-through gradient; latent weights clipped to [-1, 1] by the optimizer."""

    precision = 32
    kind = "clip"
    clips_latent_weights = True
    allowed_bits = (32,)

    def __init__(self, c: float = 1.0):
        super().__init__()
        if not c > 0:
            raise ValueError(f"clip c={c!r} must be > 0")
        self.c = float(c)

    def extra_repr(self) -> str:
        return f"c={self.c}"

    def forward(self, w):
        return straight_through(w, w.detach().clamp(-self.c, self.c))


@register("power")
class Power(Quantizer):
    """``sign(w) |a_k w|^beta``, straight-through gradient (beta = 0.5 by default, our choice)."""

    precision = 32
    kind = "power"
    allowed_bits = (32,)

    def __init__(self, beta: float = 0.5, norm: str = "max", clip_latent: bool = True):
        super().__init__()
        if not beta >= 0:
            raise ValueError(f"power beta={beta!r} must be >= 0")
        _check_norm(norm)
        self.beta, self.norm = float(beta), norm
        self.clips_latent_weights = bool(clip_latent)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, norm={self.norm}"

    def forward(self, w):
        return straight_through(w, power_projection(w, self.beta, self.norm))


@register("stochastic_projection")
class StochasticProjection(Quantizer):
    """Power projection with a random exponent per weight and per forward pass (module docstring).

    Training: ``sign(w) |a_k w|^beta_i``; eval: ``sign(w) E[|a_k w|^beta]`` (``eval_stochastic=True``
    samples in eval too). ``generator`` (attribute) makes the draws reproducible.
    """

    precision = 32
    kind = "stochastic_projection"
    allowed_bits = (32,)

    def __init__(self, beta: str = "uniform", beta_min: float = 0.0, beta_max: float = 1.0,
                 p: float = 0.5, norm: str = "max", clip_latent: bool = True,
                 eval_stochastic: bool = False):
        super().__init__()
        if beta not in BETA_DISTRIBUTIONS:
            raise ValueError(f"stochastic_projection beta={beta!r} is unknown; allowed: "
                             f"{', '.join(BETA_DISTRIBUTIONS)}")
        if not 0 <= beta_min <= beta_max:
            raise ValueError(f"stochastic_projection needs 0 <= beta_min <= beta_max, got "
                             f"beta_min={beta_min!r}, beta_max={beta_max!r}")
        if not 0 <= p <= 1:
            raise ValueError(f"stochastic_projection p={p!r} must be in [0, 1]")
        _check_norm(norm)
        self.beta, self.beta_min, self.beta_max, self.p = beta, float(beta_min), float(beta_max), float(p)
        self.norm, self.eval_stochastic = norm, eval_stochastic
        self.clips_latent_weights = bool(clip_latent)
        self.generator: torch.Generator | None = None

    def extra_repr(self) -> str:
        detail = (f"beta~U({self.beta_min}, {self.beta_max})" if self.beta == "uniform"
                  else f"beta=0 w.p. {self.p} else 1")
        return f"{detail}, norm={self.norm}"

    def sample_beta(self, like: torch.Tensor) -> torch.Tensor:
        u = torch.rand(like.shape, generator=self.generator, device=like.device, dtype=like.dtype)
        if self.beta == "uniform":
            return self.beta_min + (self.beta_max - self.beta_min) * u
        return (u >= self.p).to(like.dtype)  # 0 (sign) with probability p

    def expected(self, w: torch.Tensor) -> torch.Tensor:
        t = normalised_magnitude(w, self.norm)
        if self.beta == "uniform":
            return signs(w) * expected_power(t, self.beta_min, self.beta_max)
        return signs(w) * (self.p + (1 - self.p) * t)

    def forward(self, w):
        if self.training or self.eval_stochastic:
            projected = power_projection(w, self.sample_beta(w), self.norm)
        else:
            projected = self.expected(w)
        return straight_through(w, projected)


@register("stochastic_binary")
class StochasticBinary(StochasticSign):
    """BinaryConnect stochastic binarization (module docstring): training samples +-1 with
    P(+1) = hard_sigmoid(w), straight-through gradient (cancelled where |w| > clip, never once w is
    clipped); eval: ``mean`` E[P(w)] = clip(w, -1, 1) (default), ``sign`` or ``sample``."""

    kind = "stochastic_binary"  # tested with its expectation by default: not a sign in eval

    def __init__(self, clip: float | None = 1.0, eval_mode: str = "mean"):
        if eval_mode not in EVAL_MODES:
            raise ValueError(f"stochastic_binary eval_mode={eval_mode!r} is unknown; allowed: "
                             f"{', '.join(EVAL_MODES)}")
        super().__init__(clip=clip, eval_stochastic=eval_mode == "sample")
        self.eval_mode = eval_mode

    def extra_repr(self) -> str:
        return f"precision={self.precision}, eval_mode={self.eval_mode}"

    def forward(self, w):
        if self.training or self.eval_mode != "mean":
            return super().forward(w)
        return straight_through(w, w.detach().clamp(-1.0, 1.0))
