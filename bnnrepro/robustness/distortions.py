"""Test-time weight distortions D(W, level) of one layer's weights W (a tensor), after Merolla et al.

Every distortion is per layer: its strength is relative to a statistic of that layer's weights, so
layers of very different scales are distorted alike.

* ``additive``: ``W + sigma * s_k * eps``, eps ~ N(0, 1) per weight, s_k the layer's
  ``sigma_scale`` statistic (default ``std``: sigma is a noise-to-signal ratio of standard deviations).
* ``multiplicative``: ``W * (1 + sigma * eps)`` (Gaussian DropConnect-like).
* ``binarize``: level p in [0, 1] is the fraction of weights replaced by ``sign(W) * b_k`` (a random
  subset per draw; p = 1 binarizes the whole layer, deterministically), b_k the layer's
  ``binary_scale`` statistic. Default ``rms``: the binarized layer keeps the energy of its weights,
  hence the scale of its pre-activations that the following BN's running statistics expect (a
  +-1 layer stays exactly +-1); ``mean_abs`` is the L2-closest scale to W elementwise, ``max`` the
  paper's per-layer normaliser 1/max|W|. The choice matters with BN in eval mode (see the README).
* ``power``: ``sign(W) |W / max|W||^beta``, rescaled so the layer keeps its ``binary_scale``
  statistic; beta = 1 is the identity, beta = 0 equals ``binarize`` at p = 1.
* ``clip``: ``clip(W, -c max|W|, c max|W|)``, c in (0, 1] a fraction of the layer's largest weight.
* ``bitflip``: every weight's sign bit flipped independently with probability p (``W * (-1)^b``,
  b ~ Bernoulli(p)): a memory fault in the stored sign bits of fp32 weights, and, for ±1 weights,
  in the bits of a packed binary net (the packed engine's sweep draws the same flips:
  robustness/packed.py).

sign(0) = +1 throughout.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

SCALE_STATS = ("std", "rms", "max", "mean_abs")
BINARY_SCALE_STATS = ("rms", "mean_abs", "max")


def layer_stat(w: torch.Tensor, stat: str) -> torch.Tensor:
    """A scalar scale of a layer's weights: population ``std``, ``rms``, ``max`` |w| or ``mean_abs``."""
    w = w.detach()
    if stat == "std":
        return w.std(unbiased=False) if w.numel() > 1 else w.abs().mean()
    if stat == "rms":
        return w.pow(2).mean().sqrt()
    if stat == "max":
        return w.abs().amax()
    if stat == "mean_abs":
        return w.abs().mean()
    raise ValueError(f"layer scale statistic {stat!r} is unknown; allowed: {', '.join(SCALE_STATS)}")


def _signs(w: torch.Tensor) -> torch.Tensor:
    return torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))


def _randn(w: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    return torch.randn(w.shape, generator=gen, dtype=w.dtype, device=w.device)


@dataclass(frozen=True)
class DistortionOptions:
    sigma_scale: str = "std"        # additive noise: sigma is relative to this layer statistic
    binary_scale: str = "rms"       # binarize / power: the statistic the distorted layer keeps

    def __post_init__(self):
        if self.sigma_scale not in SCALE_STATS:
            raise ValueError(f"sigma scale {self.sigma_scale!r} is unknown; allowed: {', '.join(SCALE_STATS)}")
        if self.binary_scale not in BINARY_SCALE_STATS:
            raise ValueError(f"binary scale {self.binary_scale!r} is unknown; allowed: "
                             f"{', '.join(BINARY_SCALE_STATS)}")


def additive(w, sigma, gen, opts: DistortionOptions):
    return w + sigma * layer_stat(w, opts.sigma_scale) * _randn(w, gen)


def multiplicative(w, sigma, gen, opts: DistortionOptions):
    return w * (1 + sigma * _randn(w, gen))


def binarize(w, p, gen, opts: DistortionOptions):
    binary = _signs(w) * layer_stat(w, opts.binary_scale)
    if p >= 1:
        return binary
    if p <= 0:
        return w.clone()
    chosen = torch.rand(w.shape, generator=gen, dtype=w.dtype, device=w.device) < p
    return torch.where(chosen, binary, w)


def power(w, beta, gen, opts: DistortionOptions):
    t = w.abs() / w.abs().amax().clamp_min(torch.finfo(w.dtype).tiny)
    projected = _signs(w) * t.pow(beta)
    target = layer_stat(w, opts.binary_scale)
    current = layer_stat(projected, opts.binary_scale).clamp_min(torch.finfo(w.dtype).tiny)
    return projected * (target / current)


def clip(w, c, gen, opts: DistortionOptions):
    bound = c * w.abs().amax()
    return torch.maximum(torch.minimum(w, bound), -bound)


def bitflip(w, p, gen, opts: DistortionOptions):
    if p <= 0:
        return w.clone()
    flipped = torch.rand(w.shape, generator=gen, dtype=torch.float32, device=w.device) < p
    return torch.where(flipped, -w, w)


@dataclass(frozen=True)
class Distortion:
    name: str
    apply: Callable[[torch.Tensor, float, torch.Generator | None, DistortionOptions], torch.Tensor]
    level_name: str               # the level's symbol and meaning, for tables and plot axes
    valid: Callable[[float], bool]
    valid_text: str               # what ``valid`` accepts, for error messages
    identity_level: float         # the level at which D is the identity (the clean net)
    random: Callable[[float], bool]  # whether D at this level depends on the draw
    default_levels: tuple[float, ...]
    stronger_is_smaller: bool = False  # power and clip: a smaller level distorts more
    log_levels: bool = False           # levels spread over decades (plots use a log axis)

    def check_levels(self, levels) -> list[float]:
        out = []
        for level in levels:
            level = float(level)
            if not math.isfinite(level) or not self.valid(level):
                raise ValueError(f"--levels: {self.name} needs {self.valid_text}, got {level:g}")
            out.append(level)
        if not out:
            raise ValueError(f"--levels: {self.name} needs at least one level")
        return out


DISTORTIONS: dict[str, Distortion] = {d.name: d for d in (
    Distortion("additive", additive, "sigma (noise std / layer weight std)", lambda s: s >= 0, "sigma >= 0",
               0.0, lambda s: s > 0, (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 1.0, 1.5, 2.0)),
    Distortion("multiplicative", multiplicative, "sigma (w * (1 + sigma * eps))", lambda s: s >= 0,
               "sigma >= 0", 0.0, lambda s: s > 0, (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0)),
    Distortion("binarize", binarize, "p (fraction of weights binarized)", lambda p: 0 <= p <= 1,
               "a fraction 0 <= p <= 1", 0.0, lambda p: 0 < p < 1,
               (0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0)),
    Distortion("power", power, "beta (sign(w)|w|^beta; 1 = identity, 0 = sign)", lambda b: b >= 0,
               "beta >= 0", 1.0, lambda b: False, (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.0),
               stronger_is_smaller=True),
    Distortion("clip", clip, "c (clip at c * max|w|)", lambda c: c > 0, "a threshold c > 0", 1.0,
               lambda c: False, (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05), stronger_is_smaller=True),
    Distortion("bitflip", bitflip, "p (probability each weight's sign bit flips)", lambda p: 0 <= p <= 1,
               "a probability 0 <= p <= 1", 0.0, lambda p: p > 0,
               (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3), log_levels=True),
)}


def get_distortion(name: str) -> Distortion:
    try:
        return DISTORTIONS[name]
    except KeyError:
        raise ValueError(f"--noise {name!r} is unknown; allowed: {', '.join(DISTORTIONS)}") from None
