"""DoReFa-Net SVHN Models A-D (papers.md §c.4, tensorpack ``svhn-digit-dorefa.py``), 40x40 input::

    conv0 48 5x5 VALID (+bias, float weights) -> maxpool 2 -> act
    conv1 64 3x3 SAME -> BN -> act
    conv2 64 3x3 SAME -> BN -> maxpool 2 -> act
    conv3 128 3x3 VALID -> BN -> act
    conv4 128 3x3 SAME -> BN -> act
    conv5 128 3x3 VALID -> BN -> act
    dropout 0.5 -> conv6 512 5x5 VALID -> BN -> h (clipped, not quantized) -> fc 10 (+bias, float)

The quantizers come from the scheme ``quant`` (DoReFa's: ``conf/quant/dorefa.yaml``): ``act`` =
``quant.activation`` (dorefa_activation: h then quantize_A); conv1-conv6 weights use
``quant.weight`` (W bits) and carry ``quant.gradient`` (G bits) on their output, before BN, as
tensorpack's ``fg``; conv0 is ``quant.first_layer`` (float, no gradient quantizer, in DoReFa's
scheme), conv6's h ``quant.last_layer.input`` (clipped, not quantized) and the FC's weights
``quant.last_layer.weight`` (float). BN momentum 0.1 (tensorpack decay 0.9), eps 1e-4.

``variant`` B, C, D shrink every conv layer's channels by 1/2, 1/4, 1/8 (the paper's "about 50%,
75%, 87.5% fewer" is [U]); ``width_mult`` multiplies on top. ``quant.activation_kwargs={nonlin: cabs}``
gives tensorpack's SVHN nonlinearity min(1, |x|) instead of the paper's clip(x, 0, 1).
"""
from __future__ import annotations

import torch.nn as nn

from ..nn import Dropout, QuantConv2d, QuantLinear
from .common import norm_layer, scaled, scheme

# the scheme the DoReFa models build with when given none: conf/quant/dorefa.yaml's, (W, A, G) = (1, 2, 4)
DOREFA_QUANT = {"weight": "dorefa_weight", "w_bits": 1, "activation": "dorefa_activation", "a_bits": 2,
                "activation_kwargs": {"nonlin": "clip"}, "gradient": "dorefa_gradient", "g_bits": 4,
                "first_layer": "float", "last_layer": "float", "last_input_kwargs": {"quantize": False}}

VARIANTS = {"A": 1.0, "B": 0.5, "C": 0.25, "D": 0.125}
# (channels, kernel, SAME padding?, max-pool after BN?)
LAYERS = ((48, 5, False, True), (64, 3, True, False), (64, 3, True, True), (128, 3, False, False),
          (128, 3, True, False), (128, 3, False, False), (512, 5, False, False))


def variant_mult(variant: str) -> float:
    try:
        return VARIANTS[str(variant).upper()]
    except KeyError:
        raise ValueError(f"model.variant={variant!r} is unknown; allowed: A, B, C, D") from None


def dorefa_svhn(*, input_shape, num_classes, quant=None, variant="A", width_mult=1.0, dropout=0.5, init="auto",
                batchnorm="standard", bn_eps=1e-4, bn_momentum=0.1) -> nn.Sequential:
    quant = scheme(quant, DOREFA_QUANT)
    mult = variant_mult(variant) * width_mult
    c_in, h, w = input_shape
    layers: list[nn.Module] = []
    for i, (c, k, same, pool) in enumerate(LAYERS):
        c_out = scaled(c, mult)
        pad = k // 2 if same else 0
        if i == 0:
            first = quant.first_layer
            layers += [QuantConv2d(c_in, c_out, k, padding=pad, bias=True, init=init, input_quantizer=first.input,
                                   weight_quantizer=first.weight, grad_quantizer=first.gradient),
                       nn.MaxPool2d(2, ceil_mode=True), quant.activation.build()]
        else:
            if i == len(LAYERS) - 1 and dropout > 0:
                layers.append(Dropout(dropout))
            layers += [QuantConv2d(c_in, c_out, k, padding=pad, weight_quantizer=quant.weight, init=init,
                                   grad_quantizer=quant.gradient),
                       norm_layer(2, c_out, bn_eps, bn_momentum, batchnorm)]
            if pool:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))  # = TF 'SAME' 2x2/2 pooling
            # conv6's "h" is the last layer's input (DoReFa: clipped, not quantized)
            last_in = i == len(LAYERS) - 1
            layers.append((quant.last_layer.input if last_in else quant.activation).build())
        h, w = h - k + 1 + 2 * pad, w - k + 1 + 2 * pad
        if pool:
            h, w = -(-h // 2), -(-w // 2)
        if h < 1 or w < 1:
            raise ValueError(f"dorefa_svhn needs a larger input than {tuple(input_shape)} (40x40 is the paper's)")
        c_in = c_out
    layers += [nn.Flatten(), QuantLinear(c_in * h * w, num_classes, bias=True, init=init,
                                         weight_quantizer=quant.last_layer.weight)]
    return nn.Sequential(*layers)
