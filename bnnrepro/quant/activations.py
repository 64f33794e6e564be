"""ReLU as a 32-bit "activation quantizer", so a config can pick it by name (``quant.activation=relu``):
Merolla et al. distort weights only, and BinaryConnect-style nets keep ordinary ReLU activations.
(Hard-tanh is binary.py's ``htanh``.)"""
from __future__ import annotations

import torch

from .base import Quantizer
from .registry import register


@register("relu")
class ReLU(Quantizer):
    precision = 32
    kind = "relu"
    allowed_bits = (32,)

    def forward(self, x):
        return torch.relu(x)
