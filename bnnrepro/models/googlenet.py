"""GoogLeNet (Inception v1; Szegedy et al., "Going deeper with convolutions", CVPR 2015, Table 1)
with BatchNorm after every convolution: QNN's "AlexNet and GoogLeNet with BN" (papers.md §b.4 [U]).

::

    stem   conv 64 7x7/2 -> maxpool 3/2 -> conv 64 1x1 -> conv 192 3x3 -> maxpool 3/2
    3a 3b  -> maxpool 3/2 -> 4a 4b 4c 4d 4e -> maxpool 3/2 -> 5a 5b
    head   global average pool -> dropout 0.4 -> FC classes (+bias)

every conv followed by BN and the activation quantizer (conv -> BN -> act, then any max-pool;
the paper's LRN layers are left out, as in BN-Inception: BN replaces them). An inception block
is four parallel branches concatenated along the channels: 1x1; 1x1 reduce -> 3x3; 1x1 reduce ->
5x5; max-pool 3x3/1 -> 1x1 "pool proj", with Table 1's channel counts (:data:`BLOCKS`). At
224x224 the blocks see 28, 14 and 7 pixels; the full-width float net has about 7.0 M parameters
(Table 1's 6.8 M counts the conv/FC weights without biases or BN).

Quantizers come from the scheme ``quant`` as in :mod:`.alexnet`: the stem's first conv is
``quant.first_layer`` (QNN: higher precision, ``first_weight: identity``, its input the real
pixels), every other conv has ``quant.weight`` weights and ``quant.gradient`` on its output
(before BN); the FC is the last layer (``quant.last_layer.weight``, no gradient quantizer). The
activations feeding the last layer, 5b's branch outputs, are ``quant.last_layer.input`` (the
average pool between them and the FC makes the FC's input higher precision in any case).
``width_mult`` scales every conv's channels (each branch on its own), so ``scale=smoke`` builds a
tiny net; the spatial path works on any input of at least 1 pixel (28x28 MNIST: 2x2 at 4a).

``aux_classifiers`` adds the paper's two auxiliary heads on 4a and 4d (avgpool 5x5/3, conv 128
1x1, FC 1024, dropout 0.7, FC classes; each with BN and the hidden quantizers, the last FC float
as the main one). Off by default: whether QNN trained with them is unknown [U], and the
classification loop (``bnnrepro train``) has one loss on the main output, so it cannot train them.
In training mode each head's logits are left on its :class:`AuxiliaryHead` stage (``.logits``)
for a caller's own loop to add (the paper: weight 0.3 each); in eval mode the heads do nothing.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..nn import Dropout, QuantConv2d, QuantLinear
from ..quant.scheme import LayerQuant, Spec
from .common import norm_layer, scaled, scheme

# Szegedy et al. 2015, Table 1: (name, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj);
# "pool" is a 3x3/2 max-pool between stages
BLOCKS = (("3a", 64, 96, 128, 16, 32, 32), ("3b", 128, 128, 192, 32, 96, 64), "pool",
          ("4a", 192, 96, 208, 16, 48, 64), ("4b", 160, 112, 224, 24, 64, 64),
          ("4c", 128, 128, 256, 24, 64, 64), ("4d", 112, 144, 288, 32, 64, 64),
          ("4e", 256, 160, 320, 32, 128, 128), "pool",
          ("5a", 256, 160, 320, 32, 128, 128), ("5b", 384, 192, 384, 48, 128, 128))
AUX_AFTER = ("4a", "4d")   # the auxiliary classifiers' taps


class Inception(nn.Module):
    """Parallel branches on one input, their outputs concatenated along the channels. Each branch is
    an ``nn.Sequential`` of plain stages (``models.stages(..., branches=True)`` walks them)."""

    def __init__(self, branches: Sequence[nn.Sequential]):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class AuxiliaryHead(nn.Module):
    """An auxiliary classifier tapped off the main path: the identity on its input; in training mode
    it also runs ``head`` and keeps the logits in ``.logits`` (None in eval mode). The bit-aware
    summary lists a head as one stage (its parameters counted as float)."""

    def __init__(self, head: nn.Sequential):
        super().__init__()
        self.head = head
        self.logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.logits = self.head(x) if self.training else None
        return x


def auxiliary_logits(model: nn.Module) -> list[torch.Tensor]:
    """The auxiliary heads' logits from the last training-mode forward (empty without heads)."""
    return [m.logits for m in model.modules() if isinstance(m, AuxiliaryHead) and m.logits is not None]


def googlenet(*, input_shape, num_classes, quant=None, width_mult=1.0, dropout_hidden=0.4, init="auto",
              batchnorm="standard", bn_eps=1e-3, bn_momentum=0.1, aux_classifiers=False) -> nn.Sequential:
    """``dropout_hidden``: the dropout before the FC (the paper's 0.4; ``model.dropout_hidden``)."""
    quant = scheme(quant)
    c_in, h, w = input_shape
    if h != w:
        raise ValueError(f"googlenet expects square inputs, got {tuple(input_shape)}")
    hidden = LayerQuant(weight=quant.weight, gradient=quant.gradient)

    def unit(c_in: int, c_out: int, k: int, stride: int = 1, q: LayerQuant = hidden,
             act: Spec = quant.activation) -> list[nn.Module]:
        return [QuantConv2d(c_in, c_out, k, stride=stride, padding=k // 2, init=init, input_quantizer=q.input,
                            weight_quantizer=q.weight, grad_quantizer=q.gradient),
                norm_layer(2, c_out, bn_eps, bn_momentum, batchnorm), act.build()]

    def pool(size: int) -> tuple[nn.Module, int]:
        return nn.MaxPool2d(3, 2, padding=1), (size - 1) // 2 + 1

    def inception(c_in: int, spec: tuple, act: Spec) -> Inception:
        _, n1, r3, n3, r5, n5, proj = (scaled(c, width_mult) if isinstance(c, int) else c for c in spec)
        return Inception([nn.Sequential(*unit(c_in, n1, 1, act=act)),
                          nn.Sequential(*unit(c_in, r3, 1), *unit(r3, n3, 3, act=act)),
                          nn.Sequential(*unit(c_in, r5, 1), *unit(r5, n5, 5, act=act)),
                          nn.Sequential(nn.MaxPool2d(3, 1, padding=1), *unit(c_in, proj, 1, act=act))])

    c1, c2r, c2 = scaled(64, width_mult), scaled(64, width_mult), scaled(192, width_mult)
    layers: list[nn.Module] = unit(c_in, c1, 7, stride=2, q=quant.first_layer)
    h = (h - 1) // 2 + 1
    p, h = pool(h)
    layers += [p, *unit(c1, c2r, 1), *unit(c2r, c2, 3)]
    p, h = pool(h)
    layers.append(p)
    c = c2
    for spec in BLOCKS:
        if spec == "pool":
            p, h = pool(h)
            layers.append(p)
            continue
        block = inception(c, spec, quant.last_layer.input if spec[0] == "5b" else quant.activation)
        layers.append(block)
        c = sum(branch[-3].out_channels for branch in block.branches)
        if aux_classifiers and spec[0] in AUX_AFTER:
            layers.append(_auxiliary(c, h, num_classes, unit, quant, width_mult, init, bn_eps, bn_momentum,
                                     batchnorm))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout_hidden > 0:
        layers.append(Dropout(dropout_hidden))
    layers.append(QuantLinear(c, num_classes, bias=True, init=init, weight_quantizer=quant.last_layer.weight))
    return nn.Sequential(*layers)


def _auxiliary(c_in, h, num_classes, unit, quant, width_mult, init, bn_eps, bn_momentum, batchnorm) -> AuxiliaryHead:
    """Szegedy et al. 2015 §5: avgpool 5x5/3 (4x4 at 14x14; a global average below 5 pixels),
    conv 128 1x1, FC 1024, dropout 0.7, FC classes."""
    pool, side = (nn.AvgPool2d(5, 3), (h - 5) // 3 + 1) if h >= 5 else (nn.AdaptiveAvgPool2d(1), 1)
    c, fc = scaled(128, width_mult), scaled(1024, width_mult)
    return AuxiliaryHead(nn.Sequential(
        pool, *unit(c_in, c, 1), nn.Flatten(),
        QuantLinear(c * side * side, fc, init=init, weight_quantizer=quant.weight, grad_quantizer=quant.gradient),
        norm_layer(1, fc, bn_eps, bn_momentum, batchnorm), quant.activation.build(), Dropout(0.7),
        QuantLinear(fc, num_classes, bias=True, init=init, weight_quantizer=quant.last_layer.weight)))
