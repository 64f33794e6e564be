"""Which weights a sweep distorts, on a deep copy of the trained model (the checkpoint and the loaded
model are never touched). Only QuantLinear / QuantConv2d weights; BN and biases stay as trained.

* ``effective`` (default): the weights the trained net computes with at test time, P(w) with the
  layer's projection in eval mode (sign(w) for sign nets, w for none / clip, clip(w) for
  stochastic_binary, the expected projection for stochastic_projection). The copy computes with D(P(w)), projection
  disabled; the undistorted level reproduces the run's own test error.
* ``latent``: the real latent weights w, projection disabled (BinaryConnect's test-time use of the
  real weights), each layer rescaled by ``rms(P(w)) / rms(w)`` so that its pre-activations keep the
  scale its BN statistics were collected at. For a sign-trained net the undistorted level is the
  net computing with its real weights, and binarize (p = 1, rms scale) gives back exactly the
  trained binary net.
* ``latent_projected``: D(w) passed through the training projection again, P(D(w)) (noise flips
  signs of a binary net instead of perturbing magnitudes).
"""
from __future__ import annotations

import copy

import torch

from .. import quant
from ..nn import QuantLayer
from .distortions import Distortion, DistortionOptions

WEIGHT_MODES = ("effective", "latent", "latent_projected")


def projection_label(cfg) -> str:
    """The training projection of a run: its weight quantizer's registry name (``none`` for an
    identity, whatever alias the config used) and kwargs."""
    cls = quant.get(cfg.quant.weight)
    name = "none" if cls.kind == "identity" else cls.registry_name
    kwargs = dict(cfg.quant.get("weight_kwargs") or {})
    if kwargs:
        name += "(" + ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items())) + ")"
    return name


def _rms(w: torch.Tensor) -> torch.Tensor:
    return w.pow(2).mean().sqrt()


class DistortableCopy:
    """A deep copy of a model whose quantized layers' weights can be set to D(clean weights)."""

    def __init__(self, model: torch.nn.Module, weights: str = "effective"):
        if weights not in WEIGHT_MODES:
            raise ValueError(f"--weights {weights!r} is unknown; allowed: {', '.join(WEIGHT_MODES)}")
        self.model = copy.deepcopy(model).eval()
        self.layers = [m for m in self.model.modules() if isinstance(m, QuantLayer)]
        if not self.layers:
            raise ValueError("the model has no quantized layers (QuantLinear / QuantConv2d) to distort")
        with torch.no_grad():
            self.clean = [self._base(m, weights) for m in self.layers]
            if weights != "latent_projected":
                for m in self.layers:
                    m.weight_quantizer = quant.build("identity")
            self.reset()

    @staticmethod
    def _base(layer, weights: str) -> torch.Tensor:
        w = layer.weight.detach().clone()
        if weights == "latent_projected":
            return w
        projected = layer.weight_quantizer.eval()(layer.weight).detach().clone()
        if weights == "effective":
            return projected
        rms_w = _rms(w)
        return w * (_rms(projected) / rms_w) if rms_w > 0 else w

    @torch.no_grad()
    def set(self, distortion: Distortion, level: float, generator: torch.Generator | None,
            opts: DistortionOptions) -> None:
        for layer, clean in zip(self.layers, self.clean):
            layer.weight.copy_(distortion.apply(clean, level, generator, opts))

    @torch.no_grad()
    def reset(self) -> None:
        for layer, clean in zip(self.layers, self.clean):
            layer.weight.copy_(clean)
