"""AlexNet variants for ImageNet-sized inputs (224x224).

``dorefa_alexnet`` is tensorpack's ``alexnet-dorefa.py`` (papers.md §c.4)::

    conv0 96 12x12/4 VALID (+bias, float weights) -> act            (no BN)
    conv1 256 5x5 SAME groups 2 -> BN -> maxpool 3/2 SAME -> act
    conv2 384 3x3 SAME -> BN -> maxpool 3/2 SAME -> act
    conv3 384 3x3 SAME groups 2 -> BN -> act
    conv4 256 3x3 SAME groups 2 -> BN -> maxpool 3/2 VALID -> act
    fc0 4096 (+bias) -> BN -> act;  fc1 4096 -> BN -> h (not quantized);  fct classes (+bias, float)

with the gradient quantizer on every quantized conv/FC output (before BN); BN momentum 0.1, eps 1e-4.
conv0 is ``quant.first_layer`` and fct ``quant.last_layer.weight`` (float in DoReFa's scheme,
``first_layer: float``, ``last_layer: float``), fc1's "h" the last layer's input quantizer
``quant.last_layer.input`` (clipped, not quantized: ``last_input_kwargs: {quantize: false}``).

``binary_alexnet`` is larq zoo's BinaryAlexNet, the public re-creation of BNN's/QNN's AlexNet
(papers.md §b.4, a.5)::

    conv 64 11x11/4 SAME -> maxpool 3/2 -> BN;  conv 192 5x5 -> maxpool 3/2 -> BN;
    conv 384 3x3 -> BN;  conv 384 3x3 -> BN;  conv 256 3x3 -> maxpool 3/2 -> BN;
    FC 4096 -> BN;  FC 4096 -> BN;  FC classes -> BN

every stage followed by the activation quantizer (larq puts it on the next layer's input; same
thing), the first conv's input unquantized, no biases, BN without scale (``bn_scale=False``
freezes gamma at 1), momentum 0.1 (Keras 0.9), eps 1e-3 (Keras default). QNN keeps the first and
last layers in higher precision: a scheme with ``first_weight``/``last_weight: identity``. The gradient
quantizer sits on every conv/FC output (before pooling and BN): ``quant.first_layer.gradient`` on the
first conv (none when ``first_weight`` is set), ``quant.gradient`` on the hidden layers, none on the
last FC (as in ``mlp``).

TF 'SAME' padding is reproduced exactly (asymmetric where needed: zero padding for convs, -inf for
max-pooling) so the spatial sizes match the originals (6x6 before the FC layers at 224).
"""
from __future__ import annotations

import torch.nn as nn

from ..nn import QuantConv2d, QuantLinear
from .common import activation_after, layer_quant, norm_layer, scaled, scheme
from .dorefa_svhn import DOREFA_QUANT


def _same(size: int, k: int, s: int) -> tuple[int, int, int]:
    """TF 'SAME': (pad_before, pad_after, out_size)."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2, out


def _valid(size: int, k: int, s: int) -> int:
    out = (size - k) // s + 1
    if out < 1:
        raise ValueError(f"input too small for a {k}x{k}/{s} window (size {size})")
    return out


def _pad(before: int, after: int, value: float) -> list[nn.Module]:
    if before == after == 0:
        return []
    return [nn.ConstantPad2d((before, after, before, after), value)]


def _maxpool(h: int, same: bool) -> tuple[list[nn.Module], int]:
    if not same:
        return [nn.MaxPool2d(3, 2)], _valid(h, 3, 2)
    before, after, out = _same(h, 3, 2)
    return _pad(before, after, float("-inf")) + [nn.MaxPool2d(3, 2)], out


def _grouped(c: int, mult: float, groups: int) -> int:
    return max(groups, round(c * mult / groups) * groups)


def dorefa_alexnet(*, input_shape, num_classes, quant=None, width_mult=1.0, groups=2, init="auto",
                   batchnorm="standard", bn_eps=1e-4, bn_momentum=0.1) -> nn.Sequential:
    """``quant`` defaults to DoReFa's scheme at the abstract's (W, A, G) = (1, 2, 6)."""
    quant = scheme(quant, {**DOREFA_QUANT, "g_bits": 6})
    c_in, h, _ = input_shape
    if input_shape[1] != input_shape[2]:
        raise ValueError(f"dorefa_alexnet expects square inputs, got {tuple(input_shape)}")
    c0 = scaled(96, width_mult)
    first = quant.first_layer
    layers: list[nn.Module] = [
        QuantConv2d(c_in, c0, 12, stride=4, bias=True, init=init, input_quantizer=first.input,
                    weight_quantizer=first.weight, grad_quantizer=first.gradient),
        quant.activation.build()]
    h = _valid(h, 12, 4)
    # (channels, kernel, groups, max-pool: None / 'same' / 'valid')
    convs = ((256, 5, groups, "same"), (384, 3, 1, "same"), (384, 3, groups, None), (256, 3, groups, "valid"))
    c_in = c0
    for c, k, g, pool in convs:
        c_out = _grouped(c, width_mult, g)
        layers += [QuantConv2d(c_in, c_out, k, padding=k // 2, groups=g, weight_quantizer=quant.weight, init=init,
                               grad_quantizer=quant.gradient),
                   norm_layer(2, c_out, bn_eps, bn_momentum, batchnorm)]
        if pool:
            pool_layers, h = _maxpool(h, pool == "same")
            layers += pool_layers
        layers.append(quant.activation.build())
        c_in = c_out
    fc = scaled(4096, width_mult)
    layers += [nn.Flatten(),
               QuantLinear(c_in * h * h, fc, bias=True, weight_quantizer=quant.weight, init=init,
                           grad_quantizer=quant.gradient),
               norm_layer(1, fc, bn_eps, bn_momentum, batchnorm), quant.activation.build(),
               QuantLinear(fc, fc, weight_quantizer=quant.weight, init=init, grad_quantizer=quant.gradient),
               norm_layer(1, fc, bn_eps, bn_momentum, batchnorm), quant.last_layer.input.build(),
               QuantLinear(fc, num_classes, bias=True, init=init, weight_quantizer=quant.last_layer.weight)]
    return nn.Sequential(*layers)


def binary_alexnet(*, input_shape, num_classes, quant=None, width_mult=1.0, init="auto", batchnorm="standard",
                   bn_eps=1e-3, bn_momentum=0.1, bn_scale=False) -> nn.Sequential:
    quant = scheme(quant)
    c_in, h, _ = input_shape
    if input_shape[1] != input_shape[2]:
        raise ValueError(f"binary_alexnet expects square inputs, got {tuple(input_shape)}")

    def bn(dim, c):
        norm = norm_layer(dim, c, bn_eps, bn_momentum, batchnorm)
        if not bn_scale:
            norm.weight.requires_grad_(False)  # Keras BatchNormalization(scale=False): gamma = 1
        return norm

    layers: list[nn.Module] = []
    # (channels, kernel, stride, max-pool after the conv, first layer)
    convs = ((64, 11, 4, True), (192, 5, 1, True), (384, 3, 1, False), (384, 3, 1, False), (256, 3, 1, True))
    for i, (c, k, s, pool) in enumerate(convs):
        c_out = scaled(c, width_mult)
        q = layer_quant(quant, i, len(convs) + 3)
        before, after, h = _same(h, k, s)
        if before == after:
            conv_pad, layers_pad = before, []
        else:
            conv_pad, layers_pad = 0, _pad(before, after, 0.0)
        layers += layers_pad + [QuantConv2d(c_in, c_out, k, stride=s, padding=conv_pad, init=init,
                                            input_quantizer=q.input, weight_quantizer=q.weight,
                                            grad_quantizer=q.gradient)]
        if pool:
            layers.append(nn.MaxPool2d(3, 2))
            h = _valid(h, 3, 2)
        layers += [bn(2, c_out), quant.activation.build()]
        c_in = c_out
    widths = [c_in * h * h, scaled(4096, width_mult), scaled(4096, width_mult), num_classes]
    layers.append(nn.Flatten())
    for i in range(3):
        q = layer_quant(quant, len(convs) + i, len(convs) + 3)
        layers += [QuantLinear(widths[i], widths[i + 1], input_quantizer=q.input, weight_quantizer=q.weight, init=init,
                               grad_quantizer=q.gradient), bn(1, widths[i + 1])]
        if i < 2:
            layers.append(activation_after(quant, i, 3))
    return nn.Sequential(*layers)
