from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import quant
from . import precision


def _quantizer(spec) -> nn.Module:
    """``spec`` is a :class:`quant.Spec`, a registry name, an (name, kwargs) pair, or an already
    built module; None is the identity."""
    if spec is None:
        return quant.build("identity")
    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, quant.Spec):
        return spec.build()
    if isinstance(spec, str):
        return quant.build(spec)
    name, kwargs = spec
    return quant.build(name, **dict(kwargs))


class QuantLayer:
    """Mixin: ``input_quantizer`` on the input, ``weight_quantizer`` on the latent weight,
    ``grad_quantizer`` on the output (identity forward; quantizes the gradient coming back into
    the layer, DoReFa's ``fg`` right after the conv/FC and before BN)."""

    input_quantizer: nn.Module
    weight_quantizer: nn.Module
    grad_quantizer: nn.Module

    def _init_quant(self, input_quantizer, weight_quantizer, init: str, grad_quantizer=None) -> None:
        self.input_quantizer = _quantizer(input_quantizer)
        self.weight_quantizer = _quantizer(weight_quantizer)
        self.grad_quantizer = _quantizer(grad_quantizer)
        self.reset_latent(init)

    @property
    def binary_weights(self) -> bool:
        """Whether the weight quantizer gives 1-bit (±1) weights."""
        return getattr(self.weight_quantizer, "precision", 32) == 1

    @property
    def clips_latent_weights(self) -> bool:
        """Whether the optimizer clips this layer's latent weights to [-1, 1] (BNN's binary layers)."""
        return bool(getattr(self.weight_quantizer, "clips_latent_weights", False))

    def fans(self) -> tuple[int, int]:
        """``(fan_in, fan_out)`` of the weight, a conv kernel's receptive field counted."""
        w = self.weight
        receptive = w[0, 0].numel() if w.dim() > 2 else 1
        return w.shape[1] * receptive, w.shape[0] * receptive

    def glorot_lr_scale(self) -> float:
        """BNN's per-layer LR scale 1/sqrt(1.5/(fan_in+fan_out)) (Theano W_LR_scale="Glorot")."""
        fan_in, fan_out = self.fans()
        return 1.0 / math.sqrt(1.5 / (fan_in + fan_out))

    def reset_latent(self, init: str = "auto") -> None:
        """``uniform1``: U(-1, 1) as BNN's Theano code (H=1); ``glorot``: Glorot uniform;
        ``auto``: uniform1 for layers that clip latent weights, glorot otherwise."""
        if init == "auto":
            init = "uniform1" if self.clips_latent_weights else "glorot"
        with torch.no_grad():
            if init == "uniform1":
                self.weight.uniform_(-1.0, 1.0)
            elif init == "glorot":
                nn.init.xavier_uniform_(self.weight)
            elif init == "torch":
                pass  # keep torch's default (kaiming uniform)
            else:
                raise ValueError(f"unknown init {init!r}; allowed: auto, uniform1, glorot, torch")
            if self.bias is not None:
                self.bias.zero_()

    def quantized_weight(self) -> torch.Tensor:
        """The weight the forward computes with: the weight quantizer applied to the latent weight."""
        return self.weight_quantizer(self.weight)


class QuantLinear(nn.Linear, QuantLayer):
    """A linear layer whose input and latent weight are quantized in forward (:class:`QuantLayer`).

    ``input_quantizer``, ``weight_quantizer`` and ``grad_quantizer`` are each a registry name, a
    ``(name, kwargs)`` pair, a :class:`bnnrepro.quant.Spec`, a built module, or None (identity);
    ``init`` is :meth:`QuantLayer.reset_latent`'s. No bias by default (BN follows, as in the papers).
    """

    matmul_dtype = None  # torch.bfloat16: set by nn.precision.configure on +-1 x +-1 layers (int8 forward on CPU)
    # with matmul_dtype: the factor of a training-mode dropout before this layer (its input is then
    # {0, +-factor}, not +-1); a dropout is active exactly when the model, and so this layer, trains
    matmul_input_scale = None

    def __init__(self, in_features, out_features, bias=False, *, input_quantizer=None,
                 weight_quantizer=None, init="auto", grad_quantizer=None):
        super().__init__(in_features, out_features, bias=bias)
        self._init_quant(input_quantizer, weight_quantizer, init, grad_quantizer)

    def forward(self, x):
        """``grad_quantizer(input_quantizer(x) @ quantized_weight().T + bias)``."""
        return self.grad_quantizer(precision.linear(self.input_quantizer(x), self.weight, self.weight_quantizer,
                                                    self.bias, self.matmul_dtype,
                                                    self.matmul_input_scale if self.training else None))


class QuantConv2d(nn.Conv2d, QuantLayer):
    """A 2-d convolution whose input and latent weight are quantized in forward (:class:`QuantLayer`);
    the quantizer arguments and ``init`` as :class:`QuantLinear`'s, the rest as ``nn.Conv2d``'s."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False, *,
                 input_quantizer=None, weight_quantizer=None, init="auto", grad_quantizer=None,
                 groups=1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias,
                         groups=groups)
        self._init_quant(input_quantizer, weight_quantizer, init, grad_quantizer)

    def forward(self, x):
        """``grad_quantizer(conv2d(input_quantizer(x), quantized_weight()) + bias)``."""
        return self.grad_quantizer(
            self._conv_forward(self.input_quantizer(x), self.quantized_weight(), self.bias))
