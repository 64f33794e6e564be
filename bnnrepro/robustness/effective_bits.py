"""Effective bits per weight under noise: the capacity of a Gaussian channel carrying the weight.

A layer's weights W seen through additive noise of variance N carry at most
``C = 1/2 log2(1 + S / N)`` bits per weight (Shannon's AWGN capacity), S the layer's signal power:
``variance`` (default, var(W): the capacity formula's input variance) or ``power`` (mean W^2).
With ``sigma_scale=std`` and ``variance``, additive noise at level sigma gives exactly
``1/2 log2(1 + 1/sigma^2)`` in every layer, so 0.68 bits (Merolla et al.'s CIFAR-10 claim)
is sigma = 0.799, an SNR of 1.567. Multiplicative noise ``W * sigma * eps`` is uncorrelated with W,
of power ``sigma^2 mean(W^2)``; the same formula gives its bits (an approximation: that noise is
not independent of W). The deterministic and discrete distortions (binarize, power, clip, bitflip)
have a noise power too, their quantization error: ``N = mean((D(W) - W)^2)`` of the distorted layer
(of the draw, for the random ones), and the same formula gives their bits. The network's figure is
the mean over all distorted weights (layers weighted by their size); a layer D leaves unchanged
has infinite bits.
"""
from __future__ import annotations

import math

import torch

from .distortions import DistortionOptions, layer_stat

SIGNALS = ("variance", "power")


def capacity_bits(snr: float) -> float:
    """``1/2 log2(1 + snr)``; an infinite SNR (no noise) gives inf."""
    if snr < 0:
        raise ValueError(f"snr={snr} must be >= 0")
    return math.inf if math.isinf(snr) else 0.5 * math.log2(1.0 + snr)


def sigma_for_bits(bits: float) -> float:
    """The additive sigma (relative to the weights' std) at which the capacity is ``bits``."""
    if bits <= 0:
        raise ValueError(f"bits={bits} must be > 0")
    return 1.0 / math.sqrt(2.0 ** (2.0 * bits) - 1.0)


def signal_power(w: torch.Tensor, signal: str = "variance") -> float:
    if signal == "variance":
        return float(w.double().var(unbiased=False)) if w.numel() > 1 else 0.0
    if signal == "power":
        return float(w.double().pow(2).mean())
    raise ValueError(f"signal={signal!r} is unknown; allowed: {', '.join(SIGNALS)}")


DEFINITION = ("effective bits per weight: 1/2 log2(1 + S/N) per layer, S = the {signal} of the clean "
              "layer weights, N = the distortion's error power (additive: (sigma s_k)^2; multiplicative: "
              "sigma^2 mean(W^2); binarize, power, clip, bitflip: mean((D(W) - W)^2) of the draw), "
              "averaged over all weights (layers weighted by size)")


def noise_power(noise: str, level: float, w: torch.Tensor, opts: DistortionOptions,
                distorted: torch.Tensor | None = None) -> float | None:
    """The noise variance of ``noise`` at ``level`` on layer weights ``w``: closed form for the
    additive and multiplicative noises, else the error power of ``distorted`` (None without it)."""
    if noise == "additive":
        return (level * float(layer_stat(w, opts.sigma_scale))) ** 2
    if noise == "multiplicative":
        return level ** 2 * float(w.double().pow(2).mean())
    if distorted is None:
        return None
    return float((distorted.double() - w.double()).pow(2).mean())


def effective_bits(noise: str, level: float, weights: list[torch.Tensor],
                   opts: DistortionOptions = DistortionOptions(), signal: str = "variance",
                   distorted: list[torch.Tensor] | None = None) -> float | None:
    """Effective bits per weight of the clean layer weights ``weights`` under ``noise`` at ``level``;
    ``distorted`` (the layers' D(W)) for the distortions whose error power is measured, else None."""
    total, count = 0.0, 0
    for i, w in enumerate(weights):
        n = noise_power(noise, level, w, opts, None if distorted is None else distorted[i])
        if n is None:
            return None
        s = signal_power(w, signal)
        bits = capacity_bits(math.inf if n == 0 else s / n) if s > 0 else 0.0
        if math.isinf(bits):
            return math.inf
        total += bits * w.numel()
        count += w.numel()
    return total / count if count else None
