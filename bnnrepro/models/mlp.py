"""Fully connected nets: BNN's MLP (BNN Theano MNIST: 784 -> 3x4096 -> 10, papers.md §a.4) and,
with DoReFa or QNN quantizer schemes, the MLP of the DoReFa/QNN acceptance grid.

Per hidden layer: QuantLinear -> BatchNorm1d -> activation quantizer -> Dropout; the output layer is
QuantLinear -> BatchNorm1d (its output feeds the loss; ``output_batchnorm`` may make this one plain
BN behind shift-based hidden layers, as Torch7's MNIST model). Dropout after the sign, as the Theano code
does it.

Every quantizer comes from the scheme (``quant``, a :class:`bnnrepro.quant.QuantScheme`): the
first layer's input, weight and gradient quantizers are ``quant.first_layer``'s, the hidden
layers' ``quant.weight`` and ``quant.gradient`` (the gradient quantizer sits on each QuantLinear's
output, before BN), the activation feeding the output layer is ``quant.last_layer.input`` (DoReFa:
clipped but not quantized) and the output layer's weights ``quant.last_layer.weight``; the output
layer never has a gradient quantizer (its output gradient is the loss's).
"""
from __future__ import annotations

import math

import torch.nn as nn

from ..nn import Dropout, QuantLinear
from .common import dense_block, layer_quant, scaled, scheme


def mlp(*, input_shape, num_classes, quant=None, hidden=(4096, 4096, 4096), width_mult=1.0, dropout_in=0.0,
        dropout_hidden=0.0, bias=False, init="auto", batchnorm="standard", bn_eps=1e-4,
        bn_momentum=0.1, output_batchnorm="same") -> nn.Sequential:
    quant = scheme(quant)
    widths = [math.prod(input_shape)] + [scaled(h, width_mult) for h in hidden] + [num_classes]
    layers: list[nn.Module] = [nn.Flatten()]
    if dropout_in > 0:
        layers.append(Dropout(dropout_in))
    n = len(widths) - 1
    for i in range(n):
        q = layer_quant(quant, i, n)
        linear = QuantLinear(widths[i], widths[i + 1], bias=bias, input_quantizer=q.input,
                             weight_quantizer=q.weight, init=init, grad_quantizer=q.gradient)
        layers += dense_block(linear, quant, i, n, bn_eps=bn_eps, bn_momentum=bn_momentum, batchnorm=batchnorm,
                              dropout_hidden=dropout_hidden, output_batchnorm=output_batchnorm)
    return nn.Sequential(*layers)
