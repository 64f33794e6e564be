"""The base class of every quantizer, and what a quantizer declares about itself.

A quantizer is an ``nn.Module`` registered by name (:mod:`.registry`) that declares, as attributes:

* ``precision``: the bits of its output (32 = float);
* ``kind``: what it computes, so that code downstream (the packed engine, the robustness sweeps,
  the bit-aware summary) recognises it without looking at Python class names: ``identity``,
  ``sign`` (+-1 with sign(0) = +1; deterministic in eval unless ``eval_stochastic``), ``linear``,
  ``log``, ``dorefa_weight``, ``dorefa_activation``, ``gradient`` (identity forward, quantized
  backward), ``clip``, ``power``, ``stochastic_binary``, ``stochastic_projection``, ``relu``,
  ``hard_tanh``;
* ``clips_latent_weights``: the optimizer keeps latent weights quantized by it in [-1, 1];
* ``allowed_bits``: the widths it can be built with (``None``: any of 1..8 and 32);
* ``eval_stochastic``: it samples in eval mode too;
* ``takes_scale``: its grid stretches by a ``scale`` keyword (QNN's fixed-point grids).
"""
from __future__ import annotations

import torch.nn as nn


class Quantizer(nn.Module):
    """Base class: ``precision`` in bits (32 = float), ``kind``, and whether latent weights are clipped."""

    precision: int = 32
    kind: str = "identity"
    #: latent weights quantized by this are kept in [-1, 1] after each step (BinaryConnect / BNN)
    clips_latent_weights: bool = False
    allowed_bits: tuple[int, ...] | None = None
    eval_stochastic: bool = False
    takes_scale: bool = False
    #: the name it is registered under first (set by ``registry.register``)
    registry_name: str | None = None

    def extra_repr(self) -> str:
        return f"precision={self.precision}"
