from __future__ import annotations

import torch.nn as nn

from ..nn.dropout import Dropout
from ..quant import LayerQuant, QuantScheme


def scheme(quant: QuantScheme | None, default: dict | None = None) -> QuantScheme:
    """The scheme a factory builds with: ``quant``, else the factory's ``default`` (config keys),
    else BNN's (sign weights and activations)."""
    return QuantScheme.from_config(default or {}) if quant is None else quant


def layer_quant(quant: QuantScheme, i: int, n: int) -> LayerQuant:
    """The quantizers of layer ``i`` of a chain of ``n`` weight layers: the scheme's first layer,
    its last layer, or a hidden layer (the hidden weight and gradient quantizers, identity input).
    A lone layer (n = 1) is the first layer with the last layer's weight quantizer when that one
    is set apart, and no gradient quantizer."""
    hidden = LayerQuant(weight=quant.weight, gradient=quant.gradient)
    if n == 1:
        first, last = quant.first_layer, quant.last_layer
        weight = last.weight if last.weight != quant.weight else first.weight
        return LayerQuant(input=first.input, weight=weight, gradient=last.gradient)
    if i == 0:
        return quant.first_layer
    if i == n - 1:
        return LayerQuant(weight=quant.last_layer.weight, gradient=quant.last_layer.gradient)
    return hidden


def activation_after(quant: QuantScheme, i: int, n: int) -> nn.Module:
    """The activation quantizer after weight layer ``i`` of ``n`` (i < n - 1): the last layer's
    input quantizer after the one before last, the activation quantizer elsewhere."""
    return (quant.last_layer.input if i == n - 2 else quant.activation).build()


def dense_block(linear: nn.Module, quant: QuantScheme, i: int, n: int, *, bn_eps: float, bn_momentum: float,
                batchnorm: str, dropout_hidden: float, output_batchnorm: str = "same") -> list[nn.Module]:
    """Weight layer ``i`` of ``n`` of a fully connected stack, then BatchNorm1d (after the output
    layer of kind ``output_batchnorm``, ``same``: ``batchnorm``) and, except after the output layer,
    the activation quantizer and dropout."""
    kind = output_batchnorm if i == n - 1 and output_batchnorm != "same" else batchnorm
    block = [linear, norm_layer(1, linear.out_features, bn_eps, bn_momentum, kind)]
    if i < n - 1:
        block.append(activation_after(quant, i, n))
        if dropout_hidden > 0:
            block.append(Dropout(dropout_hidden))
    return block


def norm_layer(dim: int, features: int, eps: float, momentum: float, kind: str = "standard") -> nn.Module:
    """``standard``: torch BatchNorm; ``shift``: BNN's shift-based BatchNorm (powers of two)."""
    if kind == "shift":
        from ..nn import ShiftBatchNorm

        return ShiftBatchNorm(features, eps=eps, momentum=momentum)
    if kind != "standard":
        raise ValueError(f"model.batchnorm={kind!r} is unknown; allowed: standard, shift")
    cls = nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d
    return cls(features, eps=eps, momentum=momentum)


def scaled(width: int, mult: float) -> int:
    return max(1, int(round(width * mult)))
