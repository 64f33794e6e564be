"""BNN ConvNet ``2x128C3-MP2-2x256C3-MP2-2x512C3-MP2-2x1024FC-10`` (papers.md §a.4).

Per conv: QuantConv2d(3x3, pad 1) -> [MaxPool2d(2) after every second conv] -> BatchNorm2d ->
activation quantizer, as the Theano code orders it. ``width_mult`` scales every conv and FC width
(0.5 on the convs alone gives the SVHN net: pass ``channels=(64,64,128,128,256,256)``).
The quantizers come from the scheme ``quant``: the first conv's input and weights are
``quant.first_layer``'s (the input real-valued by default), the last FC's weights
``quant.last_layer.weight`` and the activation before it ``quant.last_layer.input``. The gradient
quantizer sits on every conv/FC output (before pooling and BN): ``quant.first_layer.gradient`` on the
first conv, ``quant.gradient`` on the hidden layers, none on the last FC (as in ``mlp``).
"""
from __future__ import annotations

import torch.nn as nn

from ..nn import Dropout, QuantConv2d, QuantLinear
from .common import dense_block, layer_quant, norm_layer, scaled, scheme


def bnn_convnet(*, input_shape, num_classes, quant=None, channels=(128, 128, 256, 256, 512, 512), fc=(1024, 1024),
                pool_after=(1, 3, 5), width_mult=1.0, dropout_hidden=0.0, bias=False, init="auto",
                batchnorm="standard", bn_eps=1e-4, bn_momentum=0.1, dropout_in=0.0,
                output_batchnorm="same") -> nn.Sequential:
    quant = scheme(quant)
    c_in, h, w = input_shape
    layers: list[nn.Module] = []
    if dropout_in > 0:
        layers.append(Dropout(dropout_in))
    n_weight = len(channels) + len(fc) + 1
    for i, c in enumerate(channels):
        c_out = scaled(c, width_mult)
        q = layer_quant(quant, i, n_weight)
        layers.append(QuantConv2d(c_in, c_out, 3, padding=1, bias=bias, init=init, input_quantizer=q.input,
                                  weight_quantizer=q.weight, grad_quantizer=q.gradient))
        if i in pool_after:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        layers += [norm_layer(2, c_out, bn_eps, bn_momentum, batchnorm), quant.activation.build()]
        c_in = c_out
    layers.append(nn.Flatten())
    widths = [c_in * h * w] + [scaled(f, width_mult) for f in fc] + [num_classes]
    n = len(widths) - 1
    for i in range(n):
        q = layer_quant(quant, len(channels) + i, n_weight)
        linear = QuantLinear(widths[i], widths[i + 1], bias=bias, input_quantizer=q.input, weight_quantizer=q.weight,
                             init=init, grad_quantizer=q.gradient)
        layers += dense_block(linear, quant, i, n, bn_eps=bn_eps, bn_momentum=bn_momentum, batchnorm=batchnorm,
                              dropout_hidden=dropout_hidden, output_batchnorm=output_batchnorm)
    return nn.Sequential(*layers)
