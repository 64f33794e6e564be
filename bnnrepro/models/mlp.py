"""Fully connected BNN (BNN Theano MNIST: 784 -> 3x4096 -> 10, papers.md §a.4).

Per hidden layer: QuantLinear -> BatchNorm1d -> activation quantizer -> Dropout; the output layer is
QuantLinear -> BatchNorm1d (its output feeds the squared hinge loss). Dropout after the sign, as the
Theano code does it.
"""
from __future__ import annotations

import math

import torch.nn as nn

from ..nn import QuantLinear
from .common import activation, norm_layer, quantizer_spec, scaled


def mlp(*, input_shape, num_classes, hidden=(4096, 4096, 4096), width_mult=1.0, dropout_in=0.0,
        dropout_hidden=0.0, weight_quant="sign", w_bits=None, act_quant="sign", a_bits=None,
        weight_kwargs=None, act_kwargs=None, first_weight_quant=None, last_weight_quant=None,
        bias=False, init="auto", batchnorm="standard", bn_eps=1e-4, bn_momentum=0.1) -> nn.Sequential:
    w_spec = quantizer_spec(weight_quant, w_bits, weight_kwargs)
    a_spec = quantizer_spec(act_quant, a_bits, act_kwargs)
    widths = [math.prod(input_shape)] + [scaled(h, width_mult) for h in hidden] + [num_classes]
    layers: list[nn.Module] = [nn.Flatten()]
    if dropout_in > 0:
        layers.append(nn.Dropout(dropout_in))
    n = len(widths) - 1
    for i in range(n):
        spec = w_spec
        if i == 0 and first_weight_quant:
            spec = (first_weight_quant, {})
        if i == n - 1 and last_weight_quant:
            spec = (last_weight_quant, {})
        layers.append(QuantLinear(widths[i], widths[i + 1], bias=bias, weight_quantizer=spec, init=init))
        layers.append(norm_layer(1, widths[i + 1], bn_eps, bn_momentum, batchnorm))
        if i < n - 1:
            layers.append(activation(a_spec))
            if dropout_hidden > 0:
                layers.append(nn.Dropout(dropout_hidden))
    return nn.Sequential(*layers)
