"""Which weights a sweep distorts, on a deep copy of the trained model (the checkpoint and the loaded
model are never touched). Only QuantLinear / QuantConv2d weights; BN and biases stay as trained.

* ``hidden`` (default; Merolla et al.'s setting, papers.md §d.2): the real-valued hidden weights w
  that training updates, projection disabled, so the copy computes with D(w). Each layer is first
  rescaled by the scalar ``rms(P(w)) / rms(w)`` so that its pre-activations keep the scale its BN
  running statistics were collected at (a BN in training mode would absorb it). For a net trained
  with no projection this is the trained net; for a sign-trained net the undistorted level is the
  net computing with its real weights (not the trained net), and binarize (p = 1, rms scale) gives
  back exactly the trained binary net.
* ``effective``: the weights the trained net computes with at test time, P(w) with the layer's
  projection in eval mode (sign(w) for sign nets, w for none / clip, clip(w) for stochastic_binary,
  the expected projection for stochastic_projection); the copy computes with D(P(w)). A
  distortion can be the identity here by construction (binarizing a sign net's ±1 weights):
  :meth:`DistortableCopy.is_trained_net` tells.
* ``hidden_projected``: D(w) passed through the training projection again, P(D(w)) (noise flips
  signs of a binary net instead of perturbing magnitudes).

Whatever the mode, :attr:`DistortableCopy.trained` keeps the trained net's effective weights: a
distorted copy whose weights equal them is the trained net itself (a no-op by construction).
"""
from __future__ import annotations

import copy

import torch

from .. import quant
from ..nn import QuantLayer
from .distortions import Distortion, DistortionOptions

WEIGHT_MODES = ("hidden", "effective", "hidden_projected")
NOOP_RTOL = 1e-6  # a distorted weight this close (relatively) to the trained one is the trained one


def projection_label(cfg) -> str:
    """The training treatment of a run: its weight quantizer's registry name (``none`` for an
    identity, whatever alias the config used) and kwargs, then ``+scaled`` for a net without
    latent clipping given U(-1, 1) init and the Glorot LR scale, ``+plain`` for a clipping net
    given neither (each projection's default is the other; see conf/experiment/merolla_mnist.yaml),
    or the two settings spelled out when only one of them differs."""
    cls = quant.get(cfg.quant.weight)
    name = "none" if cls.kind == "identity" else cls.registry_name
    kwargs = dict(cfg.quant.get("weight_kwargs") or {})
    if kwargs:
        name += "(" + ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items())) + ")"
    clips = bool(quant.build(cfg.quant.weight, **kwargs).clips_latent_weights)
    model, optim = cfg.get("model") or {}, cfg.get("optim") or {}
    init = model.get("init", "auto")
    uniform = init == "uniform1" or (init == "auto" and clips)
    scaled = optim.get("lr_scale", "none") != "none" and (
        optim.get("lr_scale_layers", "clipping") == "all" or clips)
    if uniform == scaled and uniform != clips:
        name += "+scaled" if uniform else "+plain"
    elif uniform != scaled:
        name += f"[init={init}, lr_scale={'on' if scaled else 'off'}]"
    if clips and not optim.get("clip_latent", True):
        name += "[no latent clipping]"
    return name


def _rms(w: torch.Tensor) -> torch.Tensor:
    return w.pow(2).mean().sqrt()


class DistortableCopy:
    """A deep copy of a model whose quantized layers' weights can be set to D(clean weights)."""

    def __init__(self, model: torch.nn.Module, weights: str = "hidden"):
        if weights not in WEIGHT_MODES:
            raise ValueError(f"--weights {weights!r} is unknown; allowed: {', '.join(WEIGHT_MODES)}")
        self.model = copy.deepcopy(model).eval()
        self.layers = [m for m in self.model.modules() if isinstance(m, QuantLayer)]
        if not self.layers:
            raise ValueError("the model has no quantized layers (QuantLinear / QuantConv2d) to distort")
        self.weights = weights
        with torch.no_grad():
            self.trained = [m.weight_quantizer.eval()(m.weight).detach().clone() for m in self.layers]
            self.clean = [self._base(m, weights) for m in self.layers]
            if weights != "hidden_projected":
                for m in self.layers:
                    m.weight_quantizer = quant.build("identity")
            self.reset()

    @staticmethod
    def _base(layer, weights: str) -> torch.Tensor:
        w = layer.weight.detach().clone()
        if weights == "hidden_projected":
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
    def is_trained_net(self) -> bool:
        """Whether the copy now computes with the trained net's weights, up to float rounding
        (relative 1e-6: binarizing a sign net's rescaled hidden weights gives ±(1 ± 1 ulp)): the
        distortion just set was a no-op by construction for this net."""
        if self.weights == "hidden_projected":
            current = [m.weight_quantizer.eval()(m.weight) for m in self.layers]
        else:
            current = [m.weight for m in self.layers]
        return all(c.shape == t.shape and torch.allclose(c, t, rtol=NOOP_RTOL, atol=0.0)
                   for c, t in zip(current, self.trained))

    @torch.no_grad()
    def reset(self) -> None:
        for layer, clean in zip(self.layers, self.clean):
            layer.weight.copy_(clean)
