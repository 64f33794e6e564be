"""BNN ConvNet ``2x128C3-MP2-2x256C3-MP2-2x512C3-MP2-2x1024FC-10`` (papers.md §a.4).

Per conv: QuantConv2d(3x3, pad 1) -> [MaxPool2d(2) after every second conv] -> BatchNorm2d ->
activation quantizer, as the Theano code orders it. ``width_mult`` scales every conv and FC width
(0.5 on the convs alone gives the SVHN net: pass ``channels=(64,64,128,128,256,256)``).
The first conv sees real-valued inputs (its input is not quantized); its weights are binary.
"""
from __future__ import annotations

import torch.nn as nn

from ..nn import QuantConv2d, QuantLinear
from .common import activation, norm_layer, quantizer_spec, scaled


def bnn_convnet(*, input_shape, num_classes, channels=(128, 128, 256, 256, 512, 512), fc=(1024, 1024),
                pool_after=(1, 3, 5), width_mult=1.0, dropout_hidden=0.0, weight_quant="sign",
                w_bits=None, act_quant="sign", a_bits=None, weight_kwargs=None, act_kwargs=None,
                first_weight_quant=None, last_weight_quant=None, bias=False, init="auto", batchnorm="standard",
                bn_eps=1e-4,
                bn_momentum=0.1, dropout_in=0.0, hidden=None) -> nn.Sequential:
    w_spec = quantizer_spec(weight_quant, w_bits, weight_kwargs)
    a_spec = quantizer_spec(act_quant, a_bits, act_kwargs)
    c_in, h, w = input_shape
    layers: list[nn.Module] = []
    if dropout_in > 0:
        layers.append(nn.Dropout(dropout_in))
    for i, c in enumerate(channels):
        c_out = scaled(c, width_mult)
        spec = (first_weight_quant, {}) if i == 0 and first_weight_quant else w_spec
        layers.append(QuantConv2d(c_in, c_out, 3, padding=1, bias=bias, weight_quantizer=spec, init=init))
        if i in pool_after:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        layers += [norm_layer(2, c_out, bn_eps, bn_momentum, batchnorm), activation(a_spec)]
        c_in = c_out
    layers.append(nn.Flatten())
    widths = [c_in * h * w] + [scaled(f, width_mult) for f in fc] + [num_classes]
    n = len(widths) - 1
    for i in range(n):
        spec = (last_weight_quant, {}) if i == n - 1 and last_weight_quant else w_spec
        layers.append(QuantLinear(widths[i], widths[i + 1], bias=bias, weight_quantizer=spec, init=init))
        layers.append(norm_layer(1, widths[i + 1], bn_eps, bn_momentum, batchnorm))
        if i < n - 1:
            layers.append(activation(a_spec))
            if dropout_hidden > 0:
                layers.append(nn.Dropout(dropout_hidden))
    return nn.Sequential(*layers)
