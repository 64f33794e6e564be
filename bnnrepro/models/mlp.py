"""Fully connected nets: BNN's MLP (BNN Theano MNIST: 784 -> 3x4096 -> 10, papers.md §a.4) and,
with DoReFa quantizers, the MLP of the DoReFa/QNN acceptance grid.

Per hidden layer: QuantLinear -> BatchNorm1d -> activation quantizer -> Dropout; the output layer is
QuantLinear -> BatchNorm1d (its output feeds the loss). Dropout after the sign, as the Theano code
does it.

Gradient quantization (DoReFa's ``fg``, QNN's quantized gradients): ``grad_quant`` (``g_bits``,
``grad_kwargs``) sits on the output of every hidden QuantLinear, before BN -- except the first
layer when ``first_weight_quant`` overrides its weights: DoReFa keeps that layer entirely float
(float weights, no ``fg``, as tensorpack's conv0). The output layer never has one (its output
gradient is the loss's, as DoReFa's last FC).

``quantize_last_act``: whether the activation feeding the output layer is quantized. ``None``
(default) follows the models' DoReFa convention: with ``act_quant='dorefa_activation'`` the last
layer's input is clipped but not quantized (tensorpack, as ``dorefa_svhn``/``dorefa_alexnet``); any
other activation quantizer is applied as is (BNN).
"""
from __future__ import annotations

import math

import torch.nn as nn

from ..nn import QuantLinear
from .common import activation, norm_layer, quantizer_spec, scaled


def mlp(*, input_shape, num_classes, hidden=(4096, 4096, 4096), width_mult=1.0, dropout_in=0.0,
        dropout_hidden=0.0, weight_quant="sign", w_bits=None, act_quant="sign", a_bits=None,
        weight_kwargs=None, act_kwargs=None, first_weight_quant=None, last_weight_quant=None,
        bias=False, init="auto", batchnorm="standard", bn_eps=1e-4, bn_momentum=0.1,
        grad_quant="identity", g_bits=None, grad_kwargs=None, quantize_last_act=None) -> nn.Sequential:
    w_spec = quantizer_spec(weight_quant, w_bits, weight_kwargs)
    a_spec = quantizer_spec(act_quant, a_bits, act_kwargs)
    g_spec = quantizer_spec(grad_quant, g_bits, grad_kwargs)
    if quantize_last_act is None:
        quantize_last_act = act_quant != "dorefa_activation"
    last_a_spec = a_spec if quantize_last_act else (act_quant, {**a_spec[1], "quantize": False})
    widths = [math.prod(input_shape)] + [scaled(h, width_mult) for h in hidden] + [num_classes]
    layers: list[nn.Module] = [nn.Flatten()]
    if dropout_in > 0:
        layers.append(nn.Dropout(dropout_in))
    n = len(widths) - 1
    for i in range(n):
        spec, g = w_spec, g_spec
        if i == 0 and first_weight_quant:
            spec, g = (first_weight_quant, {}), None
        if i == n - 1:
            g = None
            if last_weight_quant:
                spec = (last_weight_quant, {})
        layers.append(QuantLinear(widths[i], widths[i + 1], bias=bias, weight_quantizer=spec, init=init,
                                  grad_quantizer=g))
        layers.append(norm_layer(1, widths[i + 1], bn_eps, bn_momentum, batchnorm))
        if i < n - 1:
            layers.append(activation(last_a_spec if i == n - 2 else a_spec))
            if dropout_hidden > 0:
                layers.append(nn.Dropout(dropout_hidden))
    return nn.Sequential(*layers)
